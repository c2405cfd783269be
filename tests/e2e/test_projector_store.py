"""Multimodal projectors through the `localserve` command: import --mmproj then show, a
model given as the projector refused, pull and show of a vision model, and `plan` of a
Hub model with its projector."""

from __future__ import annotations

import json
from pathlib import Path

from localserve.store.gguf import read_projector
from localserve.store.pull import pull_model
from localserve.store.store import ModelStore
from tests.support.cli import cli
from tests.support.fakehub import FakeHub
from tests.support.vision import FAST, REPO, blob_names, events_of, file_gets, manifest_files, sha


def test_cli_import_mmproj_then_show(vision_files: dict[str, Path]) -> None:
    result = cli(
        "import", str(vision_files["model"]), "seer", "--mmproj", str(vision_files["projector"])
    )
    assert result.returncode == 0, result.stderr
    assert f"with projector {vision_files['projector'].name}" in result.stderr

    shown = cli("show", "seer")
    assert shown.returncode == 0, shown.stderr
    [row] = [line for line in shown.stdout.splitlines() if line.strip().startswith("projector")]
    assert "gemma3 (vision)" in row
    assert "67.4 kB" in row  # its size
    assert "vision" in next(line for line in shown.stdout.splitlines() if "capabilities" in line)

    facts = json.loads(cli("show", "seer", "--json").stdout)
    assert "vision" in facts["capabilities"]
    assert facts["projector"]["projector_type"] == "gemma3"
    assert facts["projector"]["vision"] is True
    assert facts["projector"]["audio"] is False
    assert facts["projector"]["embedding_length"] == 64
    assert facts["projector"]["digest"] == f"sha256:{sha(vision_files['projector'])}"
    listed = json.loads(cli("list", "--json").stdout)
    assert listed[0]["projector"] == vision_files["projector"].name
    assert (
        listed[0]["size"]
        == facts["size"]
        == sum(vision_files[k].stat().st_size for k in ("model", "projector"))
    )


def test_cli_import_of_a_model_as_mmproj_is_refused(
    vision_files: dict[str, Path], isolated_home: Path
) -> None:
    result = cli(
        "import", str(vision_files["model"]), "seer", "--mmproj", str(vision_files["other"])
    )
    assert result.returncode == 5, result.stderr  # store integrity, like any bad GGUF
    assert "Traceback" not in result.stderr
    assert "not a multimodal projector (mmproj)" in result.stderr
    store = ModelStore(isolated_home / "models")
    assert blob_names(store) == set()
    assert manifest_files(store) == []


def test_cli_pull_and_show_a_vision_model(vision_hub: FakeHub) -> None:
    pulled = cli("pull", f"hf.co/{REPO}")
    assert pulled.returncode == 0, pulled.stderr
    assert "mmproj-tiny-F16.gguf" in pulled.stderr  # its progress bar
    facts = json.loads(cli("show", f"hf.co/{REPO}", "--json").stdout)
    assert facts["projector"]["file"] == "mmproj-tiny-F16.gguf"
    assert "vision" in facts["capabilities"]


def test_plan_of_a_hub_model_holds_the_projector_pull_would_fetch(
    vision_hub: FakeHub, store: ModelStore, vision_files: dict[str, Path]
) -> None:
    from localserve.plan.devices import Devices
    from localserve.plan.planner import plan
    from localserve.plan.sizes import projector_need
    from localserve.plan.source import read_hub_header
    from localserve.store.gguf import read_gguf_model
    from localserve.store.refs import parse_ref

    remote = read_hub_header(parse_ref(f"hf.co/{REPO}"))
    # The F16 projector, as pull chooses for a Q4 model, read header only; never the F32.
    assert remote.projector is not None
    assert remote.projector_file == "mmproj-tiny-F16.gguf"
    assert file_gets(vision_hub, sha(vision_files["projector"]))
    assert file_gets(vision_hub, sha(vision_files["f32_projector"])) == []
    projector = read_projector(vision_files["projector"])
    assert remote.projector == projector
    assert remote.projector.gguf.tensors == projector.gguf.tensors
    model = read_gguf_model([vision_files["model"]])
    for devices in (Devices.cpu_only(8 << 30), Devices.with_gpus(16 << 30, ram_bytes=8 << 30)):
        planned = plan(remote.info, num_ctx=256, num_parallel=1, devices=devices)
        seen = plan(
            remote.info, num_ctx=256, num_parallel=1, devices=devices, projector=remote.projector
        )
        assert seen.projector_bytes == projector_need(projector) > 0
        assert seen.total_bytes == planned.total_bytes + seen.projector_bytes
        local = plan(model, num_ctx=256, num_parallel=1, devices=devices, projector=projector)
        assert seen == local

    # The command: the projector's row and name, and nothing downloaded.
    data = json.loads(cli("plan", f"hf.co/{REPO}", "--gpu-memory", "0", "--json").stdout)
    assert (data["source"], data["projector"]) == ("hub", "mmproj-tiny-F16.gguf")
    assert data["projector_bytes"] == projector_need(projector)
    table = cli("plan", f"hf.co/{REPO}", "--gpu-memory", "0")
    assert table.returncode == 0, table.stderr
    assert any(line.split()[:1] == ["projector"] for line in table.stdout.splitlines())
    assert blob_names(store) == set()
    # Once pulled, the store's plan is the same.
    events_of(pull_model(store, f"hf.co/{REPO}", options=FAST))
    stored = json.loads(cli("plan", f"hf.co/{REPO}", "--gpu-memory", "0", "--json").stdout)
    assert (stored["source"], stored["projector"]) == ("store", "mmproj-tiny-F16.gguf")
    assert stored["projector_bytes"] == data["projector_bytes"]
    assert stored["total_bytes"] == data["total_bytes"]
