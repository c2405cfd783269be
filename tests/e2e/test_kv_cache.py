"""KV cache types through the CLI and a daemon: `localserve plan --kv-cache-type`, and a
daemon that reloads for another cache type and shows the smaller model in /api/ps."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from localserve.plan import Devices, plan
from localserve.store.gguf import read_gguf
from tests.support.cli import assert_clean_error, cli
from tests.support.daemon import running_daemon
from tests.support.tiny_gguf import write_tiny_gguf

RAM = 64 << 30

FA_OFF_ERROR = "a q8_0 V cache needs flash attention: set flash_attention to on or auto"


@pytest.fixture(scope="module")
def path32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model whose attention heads are 32 wide: one block of q8_0 or q4_0."""
    folder = tmp_path_factory.mktemp("kv-cache")
    return write_tiny_gguf(folder / "tiny-hd32.gguf", n_embd=64, n_head=2, n_head_kv=1)


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
