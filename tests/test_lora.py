"""LoRA adapters (issue 16): the tiny adapter (tests/support/tiny_lora.py) on real
llama.cpp, the store's checks (store/adapter.py) against what llama.cpp itself accepts
and refuses, the engine applying adapters to its contexts, the runner's load, and the
memory plan."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from localserve.engine.embed import Embedder
from localserve.engine.engine import Engine
from localserve.engine.job import Job
from localserve.engine.llama import LoraAdapter, Model
from localserve.errors import EngineError, InvalidGGUFError, WrongGGUFKindError
from localserve.plan import Devices, plan
from localserve.runtime.options import LoadOptions, SamplingOptions
from localserve.runtime.protocol import LoadRequest, RunnerInfo, TextEvent
from localserve.store.adapter import AdapterInfo, check_adapter, read_adapter
from localserve.store.gguf import GGUFInfo, read_gguf, read_gguf_model
from tests.support.tiny_gguf import finish_gguf, write_tiny_gguf
from tests.support.tiny_lora import write_tiny_lora
from tests.support.tiny_projector import write_tiny_projector

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


# ---------------------------------------------------------------------- the test file


def test_tiny_lora_is_deterministic_and_matches_the_tiny_model(
    files: dict[str, Path], tmp_path: Path
) -> None:
    again = write_tiny_lora(tmp_path / "again.gguf")  # shapes computed, not read
    assert again.read_bytes() == files["lora"].read_bytes()
    assert write_tiny_lora(tmp_path / "other.gguf", seed=1).read_bytes() != again.read_bytes()


# ----------------------------------------------------------------------- read_adapter


def test_read_adapter(files: dict[str, Path]) -> None:
    info = read_adapter(files["lora"])
    assert isinstance(info, AdapterInfo)
    assert (info.architecture, info.alpha, info.rank, info.name) == ("llama", 8.0, 4, "tiny-lora")
    assert info.size == files["lora"].stat().st_size
    assert info.targets == tuple(
        f"blk.{i}.{m}.weight" for i in (0, 1) for m in ("attn_q", "attn_v", "ffn_down", "ffn_up")
    )
    # ne order: A is (n_in, rank), B (rank, n_out); attn_v's output is n_embd_kv = 32 wide.
    assert info.tensors["blk.0.attn_v.weight.lora_a"] == (64, 4)
    assert info.tensors["blk.0.attn_v.weight.lora_b"] == (4, 32)
    assert info.weights_bytes == sum(t.n_bytes for t in info.gguf.tensors)
    everywhere = read_adapter(files["everywhere"])
    assert everywhere.alpha is None
    embeddings = next(p for p in everywhere.pairs if p.target == "token_embd.weight")
    assert embeddings.base_shape == (64, read_gguf(files["base"]).vocab_size)


def write_gguf(
    path: Path,
    metadata: Callable[[gguf.GGUFWriter], None],
    tensors: Sequence[tuple[str, tuple[int, ...]]],
    architecture: str = "llama",
) -> Path:
    """A GGUF with these metadata and zero tensors of these numpy shapes."""
    writer = gguf.GGUFWriter(path, architecture)
    metadata(writer)
    finish_gguf(writer, [(name, np.zeros(shape, dtype=np.float32)) for name, shape in tensors])
    return path


def lora_keys(**overrides: Any) -> Callable[[gguf.GGUFWriter], None]:
    """The adapter keys, with some left out (None) or written another way (a callable)."""

    def add(writer: gguf.GGUFWriter) -> None:
        keys: dict[str, Any] = {
            "general.type": lambda w: w.add_type("adapter"),
            "adapter.type": lambda w: w.add_string("adapter.type", "lora"),
            "adapter.lora.alpha": lambda w: w.add_float32("adapter.lora.alpha", 8.0),
        }
        for key, value in overrides.items():
            keys[key.replace("__", ".")] = value
        for value in keys.values():
            if value is not None:
                value(writer)

    return add


PAIR = [("blk.0.attn_q.weight.lora_a", (4, 64)), ("blk.0.attn_q.weight.lora_b", (64, 4))]


@pytest.mark.parametrize(
    ("metadata", "tensors", "error", "words"),
    [
        (lora_keys(general__type=None), PAIR, WrongGGUFKindError, "general.type is missing"),
        (
            lora_keys(general__type=lambda w: w.add_type("model")),
            PAIR,
            WrongGGUFKindError,
            "general.type is 'model', not 'adapter'",
        ),
        (
            lora_keys(adapter__type=lambda w: w.add_string("adapter.type", "control_vector")),
            PAIR,
            WrongGGUFKindError,
            "adapter.type is 'control_vector', not 'lora'",
        ),
        (lora_keys(adapter__type=None), PAIR, WrongGGUFKindError, "adapter.type is missing"),
        (
            # llama.cpp reads alpha with gguf_get_val_f32, which aborts on another type.
            lora_keys(adapter__lora__alpha=lambda w: w.add_float64("adapter.lora.alpha", 8.0)),
            PAIR,
            InvalidGGUFError,
            "adapter.lora.alpha must be a float32, not float64",
        ),
        (
            lora_keys(adapter__lora__alpha=lambda w: w.add_uint32("adapter.lora.alpha", 8)),
            PAIR,
            InvalidGGUFError,
            "must be a float32, not uint32",
        ),
        (
            lora_keys(
                adapter__alora__invocation_tokens=lambda w: w.add_array(
                    "adapter.alora.invocation_tokens", [5, 6]
                )
            ),
            PAIR,
            WrongGGUFKindError,
            "activated LoRA (aLoRA) adapters are not supported",
        ),
        (lora_keys(), PAIR[:1], InvalidGGUFError, "has no .lora_b tensor to pair with"),
        (
            lora_keys(),
            [*PAIR, ("blk.0.attn_q.weight", (64, 64))],
            InvalidGGUFError,
            "'blk.0.attn_q.weight' is neither a .lora_a nor a .lora_b tensor",
        ),
        (
            lora_keys(),
            [("blk.0.attn_q.weight.lora_a", (64, 4)), ("blk.0.attn_q.weight.lora_b", (64, 4))],
            InvalidGGUFError,
            "lora_a [4, 64] and lora_b [4, 64] do not share a rank",
        ),
        (lora_keys(), [("output_norm.weight", (64,))], WrongGGUFKindError, "no LoRA tensors"),
    ],
)
def test_read_adapter_refuses(
    tmp_path: Path,
    metadata: Callable[[gguf.GGUFWriter], None],
    tensors: list[tuple[str, tuple[int, ...]]],
    error: type[Exception],
    words: str,
) -> None:
    path = write_gguf(tmp_path / "bad.gguf", metadata, tensors)
    with pytest.raises(error) as caught:
        read_adapter(path)
    assert words in str(caught.value)


def test_norm_tensors_are_ignored_as_llama_cpp_ignores_them(tmp_path: Path) -> None:
    path = write_gguf(
        tmp_path / "norm.gguf", lora_keys(), [*PAIR, ("blk.0.attn_norm.weight", (64,))]
    )
    info = read_adapter(path)
    assert info.targets == ("blk.0.attn_q.weight",)
    assert info.weights_bytes == 2 * 64 * 4 * 4


def test_read_adapter_refuses_what_is_not_an_adapter(
    files: dict[str, Path], tmp_path: Path
) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all, just some bytes" * 10)
    with pytest.raises(WrongGGUFKindError, match=r"not a LoRA adapter: not a valid GGUF file"):
        read_adapter(junk)
    with pytest.raises(WrongGGUFKindError, match=r"not a LoRA adapter: general.type is missing"):
        read_adapter(files["base"])
    projector = write_tiny_projector(tmp_path / "mmproj.gguf")
    with pytest.raises(WrongGGUFKindError, match=r"multimodal projector"):
        read_adapter(projector)


def test_an_adapter_is_not_a_model(files: dict[str, Path]) -> None:
    with pytest.raises(WrongGGUFKindError, match=r"this is a LoRA adapter, not a model"):
        read_gguf_model([files["lora"]])


# ---------------------------------------------------------------------- check_adapter


@pytest.fixture(scope="module")
def base(files: dict[str, Path]) -> GGUFInfo:
    return read_gguf_model([files["base"]])


def test_check_adapter_accepts_the_adapters_made_for_the_model(
    files: dict[str, Path], base: GGUFInfo
) -> None:
    check_adapter(read_adapter(files["lora"]), base)
    check_adapter(read_adapter(files["everywhere"]), base)


def test_check_adapter_refuses_another_width(files: dict[str, Path], base: GGUFInfo) -> None:
    with pytest.raises(WrongGGUFKindError) as caught:
        check_adapter(read_adapter(files["wide"]), base)
    message = str(caught.value)
    assert "'blk.0.attn_q.weight'" in message
    assert "of shape [128, 128], but tiny-llama's is [64, 64]" in message


def test_check_adapter_refuses_another_architecture(files: dict[str, Path], base: GGUFInfo) -> None:
    with pytest.raises(WrongGGUFKindError) as caught:
        check_adapter(read_adapter(files["qwen"]), base, model="tiny:latest")
    assert "the adapter is for qwen2 models, but tiny:latest is llama" in str(caught.value)


def test_check_adapter_refuses_a_tensor_the_model_lacks(
    files: dict[str, Path], base: GGUFInfo
) -> None:
    with pytest.raises(
        WrongGGUFKindError, match=r"'blk.2.attn_q.weight', which tiny-llama does not have"
    ):
        check_adapter(read_adapter(files["deeper"]), base)


@pytest.mark.parametrize("which", ["wide", "qwen", "deeper"])
def test_llama_cpp_refuses_what_check_adapter_refuses(
    model: Model, files: dict[str, Path], which: str
) -> None:
    """The checks are llama.cpp's own, made earlier: it refuses the same files."""
    with pytest.raises(EngineError, match=r"could not load the LoRA adapter"):
        LoraAdapter(model, files[which])
    assert model.adapters == []


# --------------------------------------------------------------------------- engine


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


# --------------------------------------------------------------------------- runner


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


# ------------------------------------------------------------------------------ plan


def test_plan_grows_by_the_adapters_weights(files: dict[str, Path], base: GGUFInfo) -> None:
    adapters = [read_adapter(files["lora"]), read_adapter(files["everywhere"])]
    options: dict[str, Any] = {
        "num_ctx": 256,
        "num_parallel": 1,
        "devices": Devices.cpu_only(64 << 30),
    }
    plain = plan(base, **options)
    tuned = plan(base, **options, adapters=adapters)
    added = sum(a.weights_bytes for a in adapters)
    assert tuned.adapter_bytes == added
    assert tuned.total_bytes - plain.total_bytes == added
    assert tuned.devices[0].adapter_bytes == added
    assert sum(layer.adapter_bytes for layer in tuned.layers) == added
    assert tuned.to_dict()["adapter_bytes"] == added
    assert "adapters" in tuned.summary() and "adapters" not in plain.summary()


def test_adapter_bytes_go_where_their_layers_go(files: dict[str, Path], base: GGUFInfo) -> None:
    """With only the output layer offloaded (num_gpu 1), the GPU holds the factors of
    output.weight; the blocks' stay on the CPU, and token_embd's always does."""
    info = read_adapter(files["everywhere"])
    by_target = {p.target: p.n_bytes for p in info.pairs}
    p = plan(
        base,
        num_ctx=256,
        num_parallel=1,
        devices=Devices.with_gpus(8 << 30, ram_bytes=64 << 30),
        num_gpu=1,
        adapters=[info],
    )
    cpu, gpu = p.devices
    assert gpu.adapter_bytes == by_target["output.weight"]
    assert cpu.adapter_bytes == info.weights_bytes - by_target["output.weight"]
    layers = {layer.index: layer.adapter_bytes for layer in p.layers}
    assert layers[-1] == by_target["token_embd.weight"]
    assert layers[0] == sum(n for t, n in by_target.items() if t.startswith("blk.0."))
    everything = plan(
        base,
        num_ctx=256,
        num_parallel=1,
        devices=Devices.with_gpus(8 << 30, ram_bytes=64 << 30),
        adapters=[info],
    )
    assert (
        everything.devices[1].adapter_bytes == info.weights_bytes - by_target["token_embd.weight"]
    )


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
