"""`localserve plan` as a user runs it: a stored model, a Hub reference read over HTTP
Range requests, a simulated card, JSON output and exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import assert_clean_error, cli
from tests.support.fakehub import FakeHub

REPO = "tester/plan-GGUF"
JSON_KEYS = (
    "weights_bytes",
    "kv_bytes",
    "compute_bytes",
    "total_bytes",
    "gpu_layers",
    "n_layers",
    "processor",
)


@pytest.fixture
def stored(tiny_gguf_path: Path, isolated_home: Path) -> str:
    result = cli("import", str(tiny_gguf_path), "tiny")
    assert result.returncode == 0, result.stderr
    return "tiny"


def plan_json(*args: str) -> dict[str, Any]:
    result = cli("plan", *args, "--json")
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_plan_of_a_stored_model(stored: str) -> None:
    result = cli("plan", stored)
    assert result.returncode == 0, result.stderr
    for needle in ("tiny:latest", "from the store", "weights", "KV cache", "compute", "processor"):
        assert needle in result.stdout
    data = plan_json(stored, "--gpu-memory", "0")
    for key in JSON_KEYS:
        assert key in data
    assert (data["source"], data["header_bytes_read"]) == ("store", 0)
    assert (data["n_layers"], data["gpu_layers"], data["processor"]) == (3, 0, "100% CPU")
    assert data["total_bytes"] == sum(
        data[k] for k in ("weights_bytes", "kv_bytes", "compute_bytes", "overhead_bytes")
    )


def test_simulated_cards(stored: str) -> None:
    full = plan_json(stored, "--gpu-memory", "24GiB")
    assert (full["gpu_layers"], full["processor"]) == (3, "100% GPU")
    assert [d["name"] for d in full["devices"]] == ["CPU", "GPU0"]
    # 512 MiB is less than a card's fixed overhead: nothing goes there.
    small = plan_json(stored, "--gpu-memory", "512MiB")
    assert (small["gpu_layers"], small["processor"]) == (0, "100% CPU")
    forced = plan_json(stored, "--gpu-memory", "24GiB", "--num-gpu", "1")
    assert forced["gpu_layers"] == 1
    assert [layer["device"] for layer in forced["layers"]] == ["CPU", "CPU", "CPU", "GPU0"]


def test_context_and_parallel(stored: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = plan_json(stored, "--ctx", "512", "--parallel", "2")
    assert (data["num_ctx"], data["num_parallel"], data["kv_cells"]) == (512, 2, 1024)
    # Defaults come from the settings, and the context is capped at the training one.
    monkeypatch.setenv("LOCALSERVE_CONTEXT_LENGTH", "100000")
    monkeypatch.setenv("LOCALSERVE_NUM_PARALLEL", "3")
    capped = cli("plan", stored, "--json")
    data = json.loads(capped.stdout)
    assert (data["num_ctx"], data["num_parallel"]) == (2048, 3)
    assert "training context" in capped.stderr


@pytest.mark.parametrize("size", ["24", "lots", "-1GiB", "24XB"])
def test_bad_gpu_memory_is_a_usage_error(stored: str, size: str) -> None:
    assert_clean_error(cli("plan", stored, "--gpu-memory", size), 2, "invalid size")


def test_plan_of_a_hub_model_reads_only_its_header(
    fake_hub: FakeHub, make_gguf: Any, isolated_home: Path
) -> None:
    path = make_gguf("big.gguf", n_embd=256, n_ff=4096, n_layer=4)  # about 36 MB
    fake_hub.add_repo(REPO, {"plan-F32.gguf": path})
    table = cli("plan", f"hf.co/{REPO}", "--gpu-memory", "8GiB")
    assert table.returncode == 0, table.stderr
    assert "header only" in table.stdout
    data = plan_json(f"hf.co/{REPO}", "--gpu-memory", "8GiB")
    assert data["source"] == "hub"
    assert 0 < data["header_bytes_read"] < path.stat().st_size // 8
    assert data["file_size"] == path.stat().st_size
    assert (data["gpu_layers"], data["n_layers"]) == (5, 5)
    # Nothing was downloaded into the store.
    assert not list((isolated_home / "models").rglob("sha256-*"))


def test_unknown_models_exit_3(fake_hub: FakeHub, isolated_home: Path) -> None:
    assert_clean_error(cli("plan", "nosuchmodel"), 3, "not found")
    assert_clean_error(cli("plan", "hf.co/tester/missing-GGUF"), 3, "not found")
