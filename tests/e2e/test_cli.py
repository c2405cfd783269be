"""The `localserve` command as a user runs it: a real process, real output, exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.cli import assert_clean_error, cli
from tests.support.fakehub import FakeHub

REPO = "tester/cli-GGUF"


@pytest.fixture
def hub(fake_hub: FakeHub, tiny_gguf_path: Path) -> FakeHub:
    fake_hub.add_repo(REPO, {"cli-Q4_K_M.gguf": tiny_gguf_path})
    return fake_hub


def test_help_and_version() -> None:
    result = cli("--help")
    assert result.returncode == 0
    for command in ("pull", "import", "list", "show", "rm", "cp"):
        assert command in result.stdout
    version = cli("--version")
    assert version.returncode == 0
    assert version.stdout.startswith("localserve version ")


def test_pull_list_show_cp_rm(hub: FakeHub, isolated_home: Path) -> None:
    pulled = cli("pull", f"hf.co/{REPO}")
    assert pulled.returncode == 0, pulled.stderr
    assert "success" in pulled.stderr
    assert "cli-Q4_K_M.gguf" in pulled.stderr  # the progress bar names the file

    listed = cli("list")
    assert listed.returncode == 0
    header, row = listed.stdout.strip().splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    assert row.split()[0] == f"hf.co/{REPO}:latest"

    as_json = json.loads(cli("list", "--json").stdout)
    assert as_json[0]["name"] == f"hf.co/{REPO}:latest"
    assert as_json[0]["quantization"] == "Q4_K_M"
    assert as_json[0]["id"] == row.split()[1]

    shown = cli("show", f"hf.co/{REPO}")
    assert shown.returncode == 0, shown.stderr
    assert "llama" in shown.stdout
    assert "Q4_K_M" in shown.stdout
    assert "context length" in shown.stdout
    facts = json.loads(cli("show", f"hf.co/{REPO}", "--json").stdout)
    assert facts["architecture"] == "llama"
    assert facts["context_length"] > 0
    assert facts["chat_template"]

    assert cli("cp", f"hf.co/{REPO}", "short").returncode == 0
    assert {m["name"] for m in json.loads(cli("list", "--json").stdout)} == {
        f"hf.co/{REPO}:latest",
        "short:latest",
    }

    removed = cli("rm", f"hf.co/{REPO}")
    assert removed.returncode == 0
    assert "deleted" in removed.stderr
    assert [m["name"] for m in json.loads(cli("list", "--json").stdout)] == ["short:latest"]
    assert cli("show", "short").returncode == 0  # the shared blob survived


def test_import_then_run_show(tiny_gguf_path: Path) -> None:
    result = cli("import", str(tiny_gguf_path), "mine:v1")
    assert result.returncode == 0, result.stderr
    assert "imported" in result.stderr
    assert json.loads(cli("list", "--json").stdout)[0]["name"] == "mine:v1"


def test_show_lists_capabilities_from_the_template(tmp_path: Path) -> None:
    from tests.support import chat_templates
    from tests.support.tiny_gguf import write_tiny_gguf

    model = write_tiny_gguf(tmp_path / "qwen3.gguf", chat_template=chat_templates.QWEN3)
    assert cli("import", str(model), "thinker").returncode == 0
    shown = cli("show", "thinker")
    assert "completion, tools, thinking, embedding" in shown.stdout, shown.stdout
    facts = json.loads(cli("show", "thinker", "--json").stdout)
    assert facts["capabilities"] == ["completion", "tools", "thinking", "embedding"]


def test_show_says_the_context_a_load_gets_here_and_why(tmp_path: Path) -> None:
    """The context a load would get (issue 28): what ``plan`` shows, the model's training
    length here; a context set by LOCALSERVE_CONTEXT_LENGTH says so."""
    from tests.support.tiny_gguf import write_tiny_gguf

    model = write_tiny_gguf(tmp_path / "tiny.gguf", n_ctx_train=1024)
    assert cli("import", str(model), "small").returncode == 0
    facts = json.loads(cli("show", "small", "--json").stdout)
    planned = json.loads(cli("plan", "small", "--json").stdout)
    assert facts["context_here"]["num_ctx"] == planned["num_ctx"] == 1024
    assert facts["context_here"]["reason"] == planned["context_reason"] == "trained"
    lines = [" ".join(line.split()) for line in cli("show", "small").stdout.splitlines()]
    assert "context here 1024 (the model's training length)" in lines

    set_by_env = cli("show", "small", "--json", env={"LOCALSERVE_CONTEXT_LENGTH": "512"})
    assert json.loads(set_by_env.stdout)["context_here"]["num_ctx"] == 512
    assert json.loads(set_by_env.stdout)["context_here"]["reason"] == "set"


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["show", "nothere"], 3, "not found"),
        (["rm", "nothere"], 3, "not found"),
        (["cp", "nothere", "x"], 3, "not found"),
        (["pull", "file:///etc/passwd"], 2, "URLs are not model names"),
        (["pull", "../../etc/passwd"], 2, "invalid model name"),
        (["pull", "x" * 5000], 2, "longer than"),
        (["pull", "llama3"], 2, "local name"),
        (["import", "/nonexistent/file.gguf", "x"], 2, "no such file"),
        (["import", "/etc/hostname", "x"], 5, "not a valid GGUF"),
        (["cp", "a", "b/../../c"], 2, "invalid model name"),
        (["stop", "../x"], 2, "invalid model name"),  # checked before looking for a daemon
    ],
)
def test_bad_input_is_one_clear_line(args: list[str], code: int, needle: str) -> None:
    result = cli(*args)
    assert_clean_error(result, code, needle)
    assert result.stderr.startswith("Error: ")  # nothing else was printed before it


def test_hub_errors(hub: FakeHub) -> None:
    assert_clean_error(cli("pull", "hf.co/tester/missing"), 3, "not found")
    assert_clean_error(cli("pull", f"hf.co/{REPO}:Q8_0"), 3, "Q4_K_M")  # lists what exists


def test_offline_mode_is_a_network_error(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert_clean_error(cli("pull", f"hf.co/{REPO}"), 4, "HF_HUB_OFFLINE is set")


def test_debug_shows_the_traceback() -> None:
    result = cli("show", "nothere", env={"LOCALSERVE_DEBUG": "1"})
    assert result.returncode == 3
    assert "Traceback" in result.stderr
    assert "ModelNotFoundError" in result.stderr


def test_bad_setting_is_reported() -> None:
    result = cli("list", env={"LOCALSERVE_NUM_PARALLEL": "many"})
    assert_clean_error(result, 2, "LOCALSERVE_NUM_PARALLEL")


def _wait_for_partial(home: Path, timeout: float = 30) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = list((home / "models" / "partial").glob("*.json"))
        if states and '"done": [0' in states[0].read_text():
            return states[0]
        time.sleep(0.05)
    raise AssertionError("the download never got going")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_pull_resumes(
    fake_hub: FakeHub, isolated_home: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    from tests.support.tiny_gguf import write_tiny_gguf

    model = write_tiny_gguf(tmp_path / "slow-Q4_K_M.gguf", n_embd=256, n_ff=512, seed=3)
    fake_hub.add_repo("tester/slow-GGUF", {model.name: model})
    fake_hub.faults.bytes_per_second = 1_500_000
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "localserve",
            "pull",
            "hf.co/tester/slow-GGUF",
            "--connections",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        _wait_for_partial(isolated_home)
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if sig == signal.SIGINT:
        assert process.returncode == 130
        assert "resume" in stderr
        assert "Traceback" not in stderr
    else:
        assert process.returncode == -signal.SIGKILL
    assert json.loads(cli("list", "--json").stdout) == []  # never a half model listed
    assert list((isolated_home / "models" / "partial").glob("*.partial"))

    fake_hub.faults.bytes_per_second = None
    served_before = len(fake_hub.requests)
    resumed = cli("pull", "hf.co/tester/slow-GGUF")
    assert resumed.returncode == 0, resumed.stderr
    ranges = [
        r.headers.get("Range", "")
        for r in fake_hub.requests[served_before:]
        if r.method == "GET" and "/api/" not in r.path and r.status in (200, 206)
    ]
    assert ranges
    assert not any(r.startswith("bytes=0-") for r in ranges)
    [entry] = json.loads(cli("list", "--json").stdout)
    import hashlib

    assert entry["digest"] == "sha256:" + hashlib.sha256(model.read_bytes()).hexdigest()


def test_concurrent_pulls_of_one_model(fake_hub: FakeHub, tmp_path: Path) -> None:
    from tests.support.tiny_gguf import write_tiny_gguf

    model = write_tiny_gguf(tmp_path / "shared-Q4_K_M.gguf", n_embd=256, n_ff=512, seed=4)
    fake_hub.add_repo("tester/shared-GGUF", {model.name: model})
    fake_hub.faults.bytes_per_second = 8_000_000
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "localserve", "pull", "hf.co/tester/shared-GGUF"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=120) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], results
    gets = [r for r in fake_hub.requests if r.method == "GET" and r.status == 206]
    requested = 0
    for r in gets:
        start, _, end = r.headers["Range"].removeprefix("bytes=").partition("-")
        requested += int(end) - int(start) + 1
    assert requested == model.stat().st_size  # downloaded once, not twice
    assert len(json.loads(cli("list", "--json").stdout)) == 1


def test_list_in_a_pipe_cuts_nothing(tiny_gguf_path: Path) -> None:
    """Issue 33: a script reading `list` (no terminal, 50 columns) gets whole values."""
    name = "my-org-finetune-of-gemma-3-270m-it-q4km:v1"  # 42 characters
    assert cli("import", str(tiny_gguf_path), name).returncode == 0
    listed = cli("list", env={"COLUMNS": "50"})
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    fields = row.split()
    assert fields[0] == name and len(fields[1]) == 12  # the whole name, the whole id
    assert row.rstrip().endswith("ago") or row.rstrip().endswith("just now")
