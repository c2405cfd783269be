"""KV cache types and flash attention without llama.cpp: settings, request options, load
options, the memory plan and its refusals, ggml's type ids."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from localserve.config import FLASH_ATTENTION_MODES, KV_CACHE_TYPES, load_settings
from localserve.engine.llama import GGML_KV_TYPES
from localserve.errors import InvalidOptionError
from localserve.plan import Devices, plan
from localserve.runtime.options import LoadOptions
from localserve.schemas.options import split_options
from localserve.store.gguf import GGML_TYPES, read_gguf
from tests.support.tiny_gguf import write_tiny_gguf

RAM = 64 << 30

QUANTIZED = [t for t in KV_CACHE_TYPES if t not in ("f32", "f16", "bf16")]

FA_OFF_ERROR = "a q8_0 V cache needs flash attention: set flash_attention to on or auto"


@pytest.fixture(scope="module")
def path32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model whose attention heads are 32 wide: one block of q8_0 or q4_0."""
    folder = tmp_path_factory.mktemp("kv-cache")
    return write_tiny_gguf(folder / "tiny-hd32.gguf", n_embd=64, n_head=2, n_head_kv=1)


def test_load_options_normalise_and_refuse() -> None:
    options = LoadOptions(kv_cache_type=" Q8_0", flash_attention="ON").validate()
    assert (options.kv_cache_type, options.flash_attention) == ("q8_0", "on")
    assert LoadOptions(flash_attention=True).validate().flash_attention == "on"  # type: ignore[arg-type]
    assert LoadOptions(flash_attention="0").validate().flash_attention == "off"
    assert LoadOptions().validate() == LoadOptions()  # f16, auto
    for bad in ("q3_k", "fp16", "", 8):
        with pytest.raises(InvalidOptionError, match="f16, q8_0, q4_0, f32, bf16") as caught:
            LoadOptions(kv_cache_type=bad).validate()  # type: ignore[arg-type]
        assert "kv_cache_type must be one of" in str(caught.value)
    with pytest.raises(InvalidOptionError, match="flash_attention must be one of auto, on, off"):
        LoadOptions(flash_attention="sometimes").validate()


@pytest.mark.parametrize("kv_type", QUANTIZED)
def test_a_quantized_cache_without_flash_attention_is_refused(kv_type: str) -> None:
    with pytest.raises(InvalidOptionError) as caught:
        LoadOptions(kv_cache_type=kv_type, flash_attention="off").validate()
    assert str(caught.value) == (
        f"a {kv_type} V cache needs flash attention: set flash_attention to on or auto"
    )
    for mode in ("on", "auto"):
        LoadOptions(kv_cache_type=kv_type, flash_attention=mode).validate()


def test_plain_types_run_without_flash_attention() -> None:
    for kv_type in ("f32", "f16", "bf16"):
        LoadOptions(kv_cache_type=kv_type, flash_attention="off").validate()


def test_request_options_are_load_options() -> None:
    split = split_options({"kv_cache_type": "Q4_0"}, num_ctx=512, num_parallel=2)
    assert (split.load.kv_cache_type, split.load.flash_attention) == ("q4_0", "auto")
    # The daemon's settings are the defaults; a request's options win.
    defaults = {"kv_cache_type": "q8_0", "flash_attention": "on"}
    split = split_options({}, num_ctx=512, num_parallel=2, **defaults)
    assert (split.load.kv_cache_type, split.load.flash_attention) == ("q8_0", "on")
    split = split_options({"kv_cache_type": "f16", "flash_attention": "off"}, num_ctx=512,
                          num_parallel=2, **defaults)  # fmt: skip
    assert (split.load.kv_cache_type, split.load.flash_attention) == ("f16", "off")
    # A different value is a different load: the scheduler reloads for it.
    assert (
        split_options({}, num_ctx=512, num_parallel=2).load
        != split_options({"kv_cache_type": "q8_0"}, num_ctx=512, num_parallel=2).load
    )
    with pytest.raises(InvalidOptionError, match=re.escape(FA_OFF_ERROR)):
        split_options({"flash_attention": "off"}, num_ctx=512, num_parallel=2, **defaults)
    with pytest.raises(InvalidOptionError, match="kv_cache_type must be one of f16, q8_0, q4_0"):
        split_options({"kv_cache_type": "q3_k"}, num_ctx=512, num_parallel=2)


def test_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert (settings.kv_cache_type, settings.flash_attention) == ("f16", "auto")
    monkeypatch.setenv("LOCALSERVE_KV_CACHE_TYPE", "Q8_0")
    monkeypatch.setenv("LOCALSERVE_FLASH_ATTENTION", "true")
    settings = load_settings()
    assert (settings.kv_cache_type, settings.flash_attention) == ("q8_0", "on")

    monkeypatch.setenv("LOCALSERVE_FLASH_ATTENTION", "off")
    with pytest.raises(InvalidOptionError) as caught:
        load_settings()
    assert str(caught.value) == (
        "invalid LOCALSERVE_FLASH_ATTENTION: a q8_0 V cache (LOCALSERVE_KV_CACHE_TYPE) needs "
        "flash attention: set it to on or auto"
    )
    monkeypatch.setenv("LOCALSERVE_KV_CACHE_TYPE", "q3_k")
    with pytest.raises(InvalidOptionError) as caught:
        load_settings()
    assert str(caught.value) == (
        "invalid LOCALSERVE_KV_CACHE_TYPE: it must be one of "
        f"{', '.join(KV_CACHE_TYPES)}, got 'q3_k'"
    )
    monkeypatch.setenv("LOCALSERVE_KV_CACHE_TYPE", "f16")
    monkeypatch.setenv("LOCALSERVE_FLASH_ATTENTION", "maybe")
    with pytest.raises(InvalidOptionError, match="must be one of auto, on, off"):
        load_settings()
    assert FLASH_ATTENTION_MODES == ("auto", "on", "off")


def test_ggml_type_ids_agree_with_the_gguf_reader() -> None:
    """The ids given to llama.cpp are the ggml types the planner sizes."""
    for kv_type, type_id in GGML_KV_TYPES.items():
        assert GGML_TYPES[type_id].name == kv_type.upper()
    assert set(GGML_KV_TYPES) == set(KV_CACHE_TYPES)


def test_heads_narrower_than_a_block_are_refused_before_loading(tiny_gguf_path: Path) -> None:
    info = read_gguf(tiny_gguf_path)  # heads 16 wide
    with pytest.raises(InvalidOptionError) as caught:
        plan(info, num_ctx=256, num_parallel=1, kv_type="q8_0", devices=Devices.cpu_only(RAM))
    assert str(caught.value) == (
        "a q8_0 KV cache stores blocks of 32 values, but this model's attention heads are "
        "16 wide (key length)"
    )
    for kv_type in ("f16", "f32", "bf16"):
        plan(info, num_ctx=256, num_parallel=1, kv_type=kv_type, devices=Devices.cpu_only(RAM))


def test_flash_attention_off_is_noted_in_the_plan(path32: Path) -> None:
    info = read_gguf(path32)
    off = plan(
        info, num_ctx=256, num_parallel=1, flash_attention=False, devices=Devices.cpu_only(RAM)
    )
    assert any("flash attention is off" in note for note in off.notes)
    on = plan(info, num_ctx=256, num_parallel=1, devices=Devices.cpu_only(RAM))
    assert not any("flash attention" in note for note in on.notes)
