"""KV cache types and flash attention: settings, request options, the memory plan, the
context llama.cpp builds, parked sequences, `localserve plan` and a daemon's /api/ps.

The default tiny model's attention heads are 16 wide, less than the 32-value blocks of
q8_0 and q4_0; the model here has heads 32 wide (n_embd 64, 2 heads, 1 KV head).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from localserve.config import FLASH_ATTENTION_MODES, KV_CACHE_TYPES, load_settings
from localserve.engine import llama
from localserve.engine.engine import Engine
from localserve.engine.job import Job
from localserve.engine.llama import GGML_KV_TYPES, Context, Model
from localserve.errors import InvalidOptionError
from localserve.plan import Devices, plan
from localserve.runtime.options import LoadOptions, SamplingOptions
from localserve.runtime.protocol import DoneEvent, LoadRequest, TextEvent
from localserve.schemas.options import split_options
from localserve.store.gguf import GGML_TYPES, read_gguf
from tests.support.daemon import running_daemon
from tests.support.tiny_gguf import write_tiny_gguf
from tests.test_cli import assert_clean_error, cli

MiB = 1 << 20
RAM = 64 << 30
GREEDY = SamplingOptions(temperature=0.0, num_predict=8)
QUANTIZED = [t for t in KV_CACHE_TYPES if t not in ("f32", "f16", "bf16")]
FA_OFF_ERROR = "a q8_0 V cache needs flash attention: set flash_attention to on or auto"


@pytest.fixture(scope="module")
def path32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model whose attention heads are 32 wide: one block of q8_0 or q4_0."""
    folder = tmp_path_factory.mktemp("kv-cache")
    return write_tiny_gguf(folder / "tiny-hd32.gguf", n_embd=64, n_head=2, n_head_kv=1)


@pytest.fixture(scope="module")
def model32(path32: Path) -> Iterator[Model]:
    loaded = Model([path32], n_gpu_layers=0)
    yield loaded
    loaded.close()


def run(engine: Engine) -> tuple[dict[str, str], dict[str, DoneEvent]]:
    texts: dict[str, str] = {}
    done: dict[str, DoneEvent] = {}
    for _ in range(10_000):
        if not engine.has_work():
            break
        for event in engine.step():
            if isinstance(event, TextEvent):
                texts[event.id] = texts.get(event.id, "") + event.text
            elif isinstance(event, DoneEvent):
                done[event.id] = event
    assert not engine.has_work()
    return texts, done


def kv_log(caplog: pytest.LogCaptureFixture) -> tuple[float, str]:
    """The KV buffers llama.cpp allocated (MiB) and its "llama_kv_cache: size" lines
    (two for a sliding-window model: the global layers' cache and the window's)."""
    text = "\n".join(record.getMessage() for record in caplog.records)
    sizes = re.findall(r"KV buffer size =\s+([\d.]+) MiB", text)
    lines = [x for x in text.splitlines() if "llama_kv_cache: size" in x]
    assert lines, text
    return sum(float(s) for s in sizes), "\n".join(lines)


# ------------------------------------------------------------------------ options


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


# ---------------------------------------------------------------- llama.cpp itself


@pytest.mark.parametrize("kv_type", KV_CACHE_TYPES)
def test_every_kv_type_loads_plans_and_generates(
    kv_type: str, model32: Model, path32: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="localserve.llama")
    options = LoadOptions(num_ctx=2048, num_parallel=2, kv_cache_type=kv_type)
    engine = Engine(model32, options, n_threads=2)
    try:
        allocated, line = kv_log(caplog)
        engine.submit(Job("a", model32.tokenize("Hello world, this is", add_special=True), GREEDY))
        engine.submit(Job("b", model32.tokenize("Once upon a time", add_special=True), GREEDY))
        texts, done = run(engine)
    finally:
        engine.close()
    assert f"K ({kv_type})" in line and f"V ({kv_type})" in line, line
    assert [done[j].eval_count for j in "ab"] == [8, 8]
    assert all(texts[j] for j in "ab")
    planned = plan(
        read_gguf(path32),
        num_ctx=2048,
        num_parallel=2,
        kv_type=kv_type,
        devices=Devices.cpu_only(RAM),
    )
    assert planned.kv_type == kv_type
    assert allocated == pytest.approx(planned.kv_bytes / MiB, abs=0.01)


def test_q8_0_plan_matches_llama_cpp_on_gemma(
    gemma_gguf_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """18 layers of one 256-wide KV head: 9,792 bytes a cell in q8_0, 18,432 in f16."""
    caplog.set_level(logging.INFO, logger="localserve.llama")
    model = Model([gemma_gguf_path], n_gpu_layers=0)
    try:
        for kv_type in ("q8_0", "q4_0"):
            caplog.clear()
            options = LoadOptions(
                num_ctx=1024, num_parallel=2, num_ubatch=32, kv_cache_type=kv_type
            )
            Context(model, options, n_threads=1).close()
            allocated, line = kv_log(caplog)
            assert f"K ({kv_type})" in line
            planned = plan(
                read_gguf(gemma_gguf_path),
                num_ctx=1024,
                num_parallel=2,
                num_ubatch=32,
                kv_type=kv_type,
                devices=Devices.cpu_only(RAM),
            )
            assert allocated == pytest.approx(planned.kv_bytes / MiB, abs=0.01)
    finally:
        model.close()


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


def test_the_runner_refuses_them_as_an_option_error(tiny_gguf_path: Path) -> None:
    """Found by the runner's plan, before llama.cpp loads anything: a 400, not a 500."""
    from localserve.scheduler.runner_client import RunnerClient

    async def body() -> None:
        options = LoadOptions(num_ctx=256, num_parallel=1, num_thread=2, kv_cache_type="q4_0")
        await RunnerClient.start(LoadRequest((tiny_gguf_path,), options))

    with pytest.raises(InvalidOptionError) as caught:
        asyncio.run(asyncio.wait_for(body(), 60))
    assert str(caught.value).startswith(
        "the model failed to load: a q4_0 KV cache stores blocks of 32 values"
    )


def test_flash_attention_off_is_noted_in_the_plan(path32: Path) -> None:
    info = read_gguf(path32)
    off = plan(
        info, num_ctx=256, num_parallel=1, flash_attention=False, devices=Devices.cpu_only(RAM)
    )
    assert any("flash attention is off" in note for note in off.notes)
    on = plan(info, num_ctx=256, num_parallel=1, devices=Devices.cpu_only(RAM))
    assert not any("flash attention" in note for note in on.notes)


def test_context_refuses_a_quantized_cache_without_flash_attention(model32: Model) -> None:
    """Even options that skipped validation never reach llama.cpp."""
    options = LoadOptions(num_ctx=256, num_parallel=1, kv_cache_type="q8_0", flash_attention="off")
    with pytest.raises(InvalidOptionError, match=re.escape(FA_OFF_ERROR)):
        Context(model32, options, n_threads=1)


def test_auto_on_a_gpu_without_flash_attention_is_refused(
    model32: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """llama.cpp turns "auto" into "on" for a quantized V cache without asking the
    backend; where the GPU has no flash-attention kernel, say so instead of running
    the attention on the CPU behind the user's back."""
    assert llama.flash_attention_supported(model32)  # the CPU backend always has it
    asked: list[Model] = []

    def unsupported(model: Model, *, n_threads: int = 1) -> bool:
        asked.append(model)
        return False

    monkeypatch.setattr(llama, "_on_gpu", lambda model: True)
    monkeypatch.setattr(llama, "flash_attention_supported", unsupported)
    quantized = LoadOptions(num_ctx=256, num_parallel=1, kv_cache_type="q8_0")
    with pytest.raises(InvalidOptionError) as caught:
        Context(model32, quantized, n_threads=1)
    assert "a q8_0 V cache needs flash attention, which this llama.cpp build cannot run" in str(
        caught.value
    )
    assert caught.value.hint is not None and "flash_attention on" in caught.value.hint
    assert asked == [model32]
    # "on" is the user's explicit choice, and an f16 cache does not need it: no question.
    for options in (
        LoadOptions(num_ctx=256, num_parallel=1, kv_cache_type="q8_0", flash_attention="on"),
        LoadOptions(num_ctx=256, num_parallel=1),
    ):
        Context(model32, options, n_threads=1).close()
    assert asked == [model32]


# ------------------------------------------------------------------------- parking


def parked_run(model: Model, kv_type: str) -> tuple[int, int, str, str]:
    """Park a conversation, continue it from the parked cells; (parked bytes, parked
    tokens, the continuation's text, a fresh engine's text for the same prompt)."""
    options = LoadOptions(num_ctx=256, num_parallel=4, kv_cache_type=kv_type)
    first = model.tokenize("alpha beta gamma delta " * 6, add_special=True)
    engine = Engine(model, options, n_threads=2)
    try:
        engine.submit(Job("a", first, GREEDY))
        run(engine)
        [held] = [s for s in engine.slots if s.tokens]
        conversation = list(held.tokens)
        engine.submit(Job("b", model.tokenize("one two three four " * 4, add_special=True), GREEDY))
        engine.step()  # admission parks "a"
        assert engine.stats.parked == 1 and len(engine.parked) == 1
        parked_bytes, parked_tokens = engine.parked_bytes, engine.parked_tokens
        run(engine)
        follow_up = [*conversation, *model.tokenize(" and then", add_special=False)]
        engine.submit(Job("c", follow_up, GREEDY))
        texts, done = run(engine)
        assert engine.stats.restored == 1
        assert done["c"].prompt_cached == len(conversation)
    finally:
        engine.close()
    fresh = Engine(model, options, n_threads=2)
    try:
        fresh.submit(Job("c", follow_up, GREEDY))
        fresh_texts, fresh_done = run(fresh)
        assert fresh_done["c"].prompt_cached == 0
    finally:
        fresh.close()
    return parked_bytes, parked_tokens, texts["c"], fresh_texts["c"]


def test_parked_sequences_keep_the_cache_type(model32: Model) -> None:
    """A parked q8_0 sequence is stored as q8_0 cells (about 34/64 of f16's bytes)
    and restored as such: the continuation is what a fresh engine generates."""
    f16_bytes, f16_tokens, f16_text, f16_fresh = parked_run(model32, "f16")
    q8_bytes, q8_tokens, q8_text, q8_fresh = parked_run(model32, "q8_0")
    assert f16_tokens == q8_tokens > 0
    assert f16_text == f16_fresh
    assert q8_text == q8_fresh
    # Per cell: K and V of 2 layers x 32 values; f16 256 bytes, q8_0 136 (+ metadata).
    assert q8_bytes < f16_bytes * 0.6
    assert q8_bytes >= q8_tokens * 2 * 2 * 34


# --------------------------------------------------------------- plan and daemon


def test_plan_command_takes_the_kv_cache_type(
    path32: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli("import", str(path32), "hd32").returncode == 0

    def kv(*args: str) -> tuple[str, int]:
        result = cli("plan", "hd32", "--ctx", "1024", "--gpu-memory", "0", "--json", *args)
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        return data["kv_type"], data["kv_bytes"]

    f16 = kv()
    q8 = kv("--kv-cache-type", "Q8_0")
    assert (f16[0], q8[0]) == ("f16", "q8_0")
    assert q8[1] * 64 == f16[1] * 34
    shown = cli("plan", "hd32", "--kv-cache-type", "q4_0", "--gpu-memory", "0")
    assert "KV cells (q4_0)" in shown.stdout
    monkeypatch.setenv("LOCALSERVE_KV_CACHE_TYPE", "q8_0")
    assert kv() == q8  # the setting is the default
    assert_clean_error(
        cli("plan", "hd32", "--kv-cache-type", "q3_k"), 2, "--kv-cache-type must be one of f16"
    )


def test_daemon_reloads_for_a_kv_cache_type_and_ps_shrinks(path32: Path, tmp_path: Path) -> None:
    """The daemon runs with LOCALSERVE_FLASH_ATTENTION=off (f16); a request asking for
    q8_0 must also turn flash attention back on, and then the model reloads smaller."""
    home = tmp_path / "home"
    with (
        running_daemon(home, path32, env={"LOCALSERVE_FLASH_ATTENTION": "off"}) as daemon,
        httpx.Client(base_url=daemon.url, timeout=60, trust_env=False) as client,
    ):

        def generate(options: dict[str, object]) -> httpx.Response:
            body = {"model": "tiny", "prompt": "hi", "stream": False, "options": options}
            return client.post("/api/generate", json={**body, "keep_alive": -1})

        def size() -> int:
            [model] = client.get("/api/ps").json()["models"]
            return int(model["size"])

        assert generate({"num_predict": 2}).status_code == 200
        f16 = size()
        refused = generate({"num_predict": 2, "kv_cache_type": "q8_0"})
        assert refused.status_code == 400
        assert refused.json()["error"].startswith(FA_OFF_ERROR)
        bad = generate({"kv_cache_type": "q3_k"})
        assert bad.status_code == 400
        assert "kv_cache_type must be one of f16, q8_0, q4_0" in bad.json()["error"]
        assert size() == f16  # nothing reloaded for refused requests

        answer = generate({"num_predict": 2, "kv_cache_type": "q8_0", "flash_attention": "auto"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["eval_count"] == 2
        q8 = size()
    info = read_gguf(path32)

    def planned(kv_type: str) -> int:
        return plan(
            info, num_ctx=4096, num_parallel=4, kv_type=kv_type, devices=Devices.cpu_only(RAM)
        ).kv_bytes

    assert f16 - q8 == planned("f16") - planned("q8_0") > 0
