"""LoRA adapters without llama.cpp: the tiny adapter writer, the store's reader and checks
(store/adapter.py), and the memory plan's share for adapters."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from localserve.errors import InvalidGGUFError, WrongGGUFKindError
from localserve.plan import Devices, plan
from localserve.store.adapter import AdapterInfo, check_adapter, read_adapter
from localserve.store.gguf import GGUFInfo, read_gguf, read_gguf_model
from tests.support.tiny_gguf import finish_gguf, write_tiny_gguf
from tests.support.tiny_lora import write_tiny_lora
from tests.support.tiny_projector import write_tiny_projector


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


def test_tiny_lora_is_deterministic_and_matches_the_tiny_model(
    files: dict[str, Path], tmp_path: Path
) -> None:
    again = write_tiny_lora(tmp_path / "again.gguf")  # shapes computed, not read
    assert again.read_bytes() == files["lora"].read_bytes()
    assert write_tiny_lora(tmp_path / "other.gguf", seed=1).read_bytes() != again.read_bytes()


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
