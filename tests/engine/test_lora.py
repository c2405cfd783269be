"""LoRA adapters on real llama.cpp (tests/support/tiny_lora.py): what llama.cpp accepts
and refuses against the store's checks, the engine applying adapters to its contexts,
the embedder, the runner's load, and planned bytes against llama.cpp's allocation."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from localserve.engine.embed import Embedder
from localserve.engine.engine import Engine
from localserve.engine.job import Job
from localserve.engine.llama import LoraAdapter, Model
from localserve.errors import EngineError, WrongGGUFKindError
from localserve.plan import Devices
from localserve.runtime.options import LoadOptions, SamplingOptions
from localserve.runtime.protocol import LoadRequest, RunnerInfo, TextEvent
from localserve.store.adapter import read_adapter
from localserve.store.gguf import GGUFInfo, read_gguf_model
from tests.support.tiny_gguf import write_tiny_gguf
from tests.support.tiny_lora import write_tiny_lora

GREEDY = SamplingOptions(temperature=0.0, num_predict=16)

PROMPTS = ["Hello world, this is", "The capital of France is", "Once upon a time", "1, 2, 3, 4,"]

MiB = 1 << 20


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lora")
    base = write_tiny_gguf(root / "tiny.gguf")
    return {
        "base": base,
        "lora": write_tiny_lora(root / "lora.gguf", base=base),
        # Every kind of target: block matrices, the output projection, the embeddings
        # (whose factors llama.cpp reads the other way round).
        "everywhere": write_tiny_lora(
            root / "everywhere.gguf",
            base=base,
            targets=("attn_k", "attn_output", "ffn_gate", "output", "token_embd"),
            seed=1,
            alpha=None,
        ),
        "wide": write_tiny_lora(root / "wide.gguf", n_embd=128),
        "qwen": write_tiny_lora(root / "qwen.gguf", architecture="qwen2"),
        "deeper": write_tiny_lora(root / "deeper.gguf", n_layer=3),
    }


@pytest.fixture(scope="module")
def model(files: dict[str, Path]) -> Iterator[Model]:
    loaded = Model([files["base"]], n_gpu_layers=0)
    yield loaded
    loaded.close()


@pytest.fixture
def adapter(model: Model, files: dict[str, Path]) -> Iterator[LoraAdapter]:
    """The default adapter on the shared model, for one test (contexts made by the
    test must be closed before it ends)."""
    loaded = LoraAdapter(model, files["lora"])
    yield loaded
    loaded.close()
    assert model.adapters == []


def generate(
    model: Model, adapters: Sequence[tuple[LoraAdapter, float]] | None = None
) -> list[str]:
    """Greedy answers to PROMPTS from a fresh engine (with these adapters, if given)."""
    engine = Engine(model, LoadOptions(num_ctx=256, num_parallel=4), n_threads=2)
    try:
        if adapters is not None:
            engine.context.set_adapters(adapters)
        for i, prompt in enumerate(PROMPTS):
            engine.submit(Job(str(i), model.tokenize(prompt, add_special=True), GREEDY))
        texts = dict.fromkeys(map(str, range(len(PROMPTS))), "")
        while engine.has_work():
            for event in engine.step():
                if isinstance(event, TextEvent):
                    texts[event.id] += event.text
        return [texts[str(i)] for i in range(len(PROMPTS))]
    finally:
        engine.close()


@pytest.fixture(scope="module")
def base(files: dict[str, Path]) -> GGUFInfo:
    return read_gguf_model([files["base"]])


@pytest.mark.parametrize("which", ["wide", "qwen", "deeper"])
def test_llama_cpp_refuses_what_check_adapter_refuses(
    model: Model, files: dict[str, Path], which: str
) -> None:
    """The checks are llama.cpp's own, made earlier: it refuses the same files."""
    with pytest.raises(EngineError, match=r"could not load the LoRA adapter"):
        LoraAdapter(model, files[which])
    assert model.adapters == []


def test_an_adapter_changes_greedy_output(model: Model, adapter: LoraAdapter) -> None:
    plain = generate(model, [])
    tuned = generate(model)  # the model's adapters, at their scale (1.0)
    assert all(tuned), tuned
    for prompt, before, after in zip(PROMPTS, plain, tuned, strict=True):
        assert before != after, prompt
    assert generate(model, [(adapter, 1.0)]) == tuned
    assert generate(model, [(adapter, 0.5)]) != tuned


def test_scale_zero_is_no_adapter(model: Model, files: dict[str, Path]) -> None:
    plain = generate(model)
    off = LoraAdapter(model, files["lora"], scale=0.0)
    try:
        assert generate(model) == plain
    finally:
        off.close()


def test_every_kind_of_target_loads_and_counts(model: Model, files: dict[str, Path]) -> None:
    plain = generate(model)
    tuned = LoraAdapter(model, files["everywhere"])
    try:
        changed = generate(model)
    finally:
        tuned.close()
    assert changed != plain
    assert generate(model) == plain  # closed: gone from new contexts


def test_two_adapters_add_up(model: Model, files: dict[str, Path], adapter: LoraAdapter) -> None:
    one = generate(model)
    second = LoraAdapter(model, files["everywhere"])
    try:
        assert [a.path.name for a in model.adapters] == ["lora.gguf", "everywhere.gguf"]
        both = generate(model)
        assert both != one
        assert generate(model, [(second, 1.0)]) not in (one, both)
    finally:
        second.close()


def test_the_embedder_applies_the_models_adapters(model: Model, files: dict[str, Path]) -> None:
    def embed() -> list[float]:
        embedder = Embedder(model, LoadOptions(num_ctx=128), n_threads=2)
        try:
            return embedder.embed(["hello there"], truncate=True).vectors[0]
        finally:
            embedder.close()

    plain = embed()
    tuned = LoraAdapter(model, files["lora"])
    try:
        changed = embed()
    finally:
        tuned.close()
    assert changed != pytest.approx(plain, abs=1e-3)


def test_adapters_are_freed_once_whatever_the_order(files: dict[str, Path]) -> None:
    first = Model([files["base"]], n_gpu_layers=0)
    kept = LoraAdapter(first, files["lora"])
    closed = LoraAdapter(first, files["everywhere"])
    closed.close()
    closed.close()
    assert first.adapters == [kept]
    first.close()  # frees ``kept`` before the model
    assert kept.handle is None and first.adapters == []
    kept.close()  # nothing left to free

    # An adapter the model frees (llama.cpp deletes the ones still registered with it)
    # is not freed a second time by its own close.
    second = Model([files["base"]], n_gpu_layers=0)
    adapter = LoraAdapter(second, files["lora"])
    second.adapters.remove(adapter)
    second.close()
    adapter.close()
    assert adapter.handle is None


def load_runner(files: dict[str, Path], adapters: tuple[tuple[Path, float], ...]) -> RunnerInfo:
    from localserve.engine.loading import Loader

    loader = Loader(probe=lambda **_: Devices.cpu_only(64 << 30))
    options = LoadOptions(num_ctx=256, num_parallel=1, num_gpu=0)
    loaded = loader.load(LoadRequest((files["base"],), options, adapters=adapters))
    loaded.close()
    return loaded.info


def test_runner_loads_adapters_and_counts_them(files: dict[str, Path]) -> None:
    plain = load_runner(files, ())
    tuned = load_runner(files, ((files["lora"], 1.0), (files["everywhere"], 0.5)))
    assert (plain.adapters, tuned.adapters) == (0, 2)
    lora = (
        read_adapter(files["lora"]).weights_bytes + read_adapter(files["everywhere"]).weights_bytes
    )
    assert tuned.size - plain.size == lora
    assert "adapters" in tuned.plan


def test_runner_refuses_an_adapter_for_another_model_before_loading(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from localserve.engine.loading import Loader

    loader = Loader(probe=lambda **_: Devices.cpu_only(64 << 30))
    monkeypatch.setattr(loader, "_load_model", lambda *_: pytest.fail("loaded despite the check"))
    with pytest.raises(WrongGGUFKindError, match=r"of shape \[128, 128\]"):
        loader.load(LoadRequest((files["base"],), adapters=((files["wide"], 1.0),)))


def test_planned_adapter_bytes_match_what_llama_cpp_allocates(
    files: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_tiny_lora(tmp_path / "rank64.gguf", base=files["base"], rank=64)
    caplog.set_level(logging.INFO, logger="localserve.llama")
    model = Model([files["base"]], n_gpu_layers=0)
    try:
        caplog.clear()
        LoraAdapter(model, path)
        logged = [
            float(m)
            for record in caplog.records
            for m in re.findall(r"LoRA buffer size =\s+([\d.]+) MiB", record.getMessage())
        ]
    finally:
        model.close()
    assert logged
    assert sum(logged) == pytest.approx(read_adapter(path).weights_bytes / MiB, abs=0.01)
