"""`run`, `ps`, `stop`, `--version` and `--help` as a user runs them: real processes
against a real daemon serving the tiny model.

The daemon fixture comes from tests/support/daemon.py (one per module). Every daemon a
test starts itself (the auto-start test) is stopped by that test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.daemon import (
    Daemon,
    daemon_env,
    free_port,
    stopped_afterwards,
)
from tests.support.fakehub import FakeHub
from tests.support.tiny_gguf import write_tiny_gguf

HEAVY = (
    "pydantic",
    "httpx",
    "huggingface_hub",
    "uvicorn",
    "fastapi",
    "numpy",
    "llama_cpp",
    "prompt_toolkit",
    # localserve's own heavy parts: the planner and the GGUF reader (issue 33).
    "localserve.plan",
    "localserve.store.gguf",
    "localserve.engine",
)


def cli(
    *args: str,
    env: dict[str, str],
    stdin: str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "localserve", *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**env, "COLUMNS": "200"},
        check=False,
    )


@pytest.fixture(scope="module")
def env(daemon: Daemon) -> dict[str, str]:
    """The environment of a user whose LOCALSERVE_HOST points at the test daemon."""
    return daemon_env(daemon.home, daemon.port)


def assert_one_error(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("Error: "), result.stderr
    assert result.stdout == ""
    for needle in needles:
        assert needle in result.stderr


def stats(stderr: str) -> dict[str, str]:
    """--verbose lines ("eval count:   5 token(s)") as a dict."""
    rows = {}
    for line in stderr.splitlines():
        label, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            rows[label.strip()] = value.strip()
    return rows


def test_prompt_prints_only_the_answer(env: dict[str, str]) -> None:
    result = cli("run", "tiny", "why", "is", "the", "sky", "blue", "-o", "num_predict=8", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.endswith("\n") and not result.stdout.endswith("\n\n")
    assert result.stdout.strip()


def test_piped_stdin_goes_before_the_prompt(env: dict[str, str]) -> None:
    greedy = ("-o", "temperature=0", "-o", "num_predict=12")
    piped = cli("run", "tiny", "summarize", *greedy, env=env, stdin="the file\n")
    assert piped.returncode == 0, piped.stderr
    joined = cli("run", "tiny", "the file\n\nsummarize", *greedy, env=env)
    assert piped.stdout == joined.stdout  # greedy: the same prompt, the same answer
    only_stdin = cli("run", "tiny", *greedy, env=env, stdin="the file\n\nsummarize")
    assert only_stdin.stdout == joined.stdout


def test_verbose_prints_timings_to_stderr(env: dict[str, str]) -> None:
    result = cli("run", "tiny", "hello", "-o", "num_predict=5", "--verbose", env=env)
    assert result.returncode == 0, result.stderr
    rows = stats(result.stderr)
    for label in (
        "total duration",
        "load duration",
        "time to first token",
        "prompt eval count",
        "prompt eval duration",
        "prompt eval rate",
        "eval count",
        "eval duration",
        "eval rate",
    ):
        assert label in rows, result.stderr
    assert rows["eval count"] == "5 token(s)"
    assert rows["eval rate"].endswith(" tokens/s")
    assert "eval count" not in result.stdout


def test_options_system_and_keepalive_reach_the_daemon(env: dict[str, str]) -> None:
    base = ("-o", "num_predict=4", "--verbose")
    plain = stats(cli("run", "tiny", "question one", *base, env=env).stderr)
    with_system = cli(
        "run", "tiny", "question one", "--system", "answer in one word", *base, env=env
    )
    assert with_system.returncode == 0, with_system.stderr
    assert int(stats(with_system.stderr)["prompt eval count"].split()[0]) > int(
        plain["prompt eval count"].split()[0]
    )
    stopped = cli(
        "run", "tiny", "x", "-o", "stop=a", "-o", "stop=e", "-o", "seed=3", *base, env=env
    )
    assert stopped.returncode == 0, stopped.stderr
    assert "a" not in stopped.stdout and "e" not in stopped.stdout


def test_format_json(env: dict[str, str]) -> None:
    result = cli("run", "tiny", "three colours", "--format", "json", "-o", "temperature=0", env=env)
    assert result.returncode == 0, result.stderr
    json.loads(result.stdout)


def test_model_without_a_chat_template_still_answers(
    daemon: Daemon, env: dict[str, str], tmp_path: Path
) -> None:
    from localserve.store.importing import import_gguf
    from localserve.store.store import ModelStore

    raw = write_tiny_gguf(tmp_path / "raw.gguf", chat_template=None)
    for _ in import_gguf(ModelStore(daemon.home / "models"), raw, "raw"):
        pass
    result = cli("run", "raw", "hello", "-o", "num_predict=4", "--verbose", env=env)
    assert result.returncode == 0, result.stderr
    assert stats(result.stderr)["eval count"] == "4 token(s)"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["-o", "temprature=1"], "did you mean temperature?"),
        (["-o", "num_predict=abc"], "num_predict must be an integer"),
        (["-o", "top_p=7"], "top_p must be between"),
        (["-o", "temperature"], "KEY=VALUE"),
        (["-o", "stop="], "stop takes non-empty strings"),
        (["--format", "yaml"], "unsupported format"),
        (["--keepalive", "soon"], "invalid duration"),
    ],
)
def test_bad_input_fails_before_any_request(args: list[str], needle: str, tmp_path: Path) -> None:
    # No daemon at this address: a request (or an auto-start) would show in the result.
    nowhere = daemon_env(tmp_path / "home", free_port())
    result = cli("run", "tiny", "hi", *args, env=nowhere)
    assert_one_error(result, 2, needle)
    assert not (tmp_path / "home" / "state").exists()  # no daemon was started


def test_thinking_is_shown_apart_hidden_or_off(
    env: dict[str, str], tool_models: dict[str, str]
) -> None:
    # tiny-r1's prompt opens a thinking block: a random model's whole answer is thought.
    shown = cli(
        "run", "tiny-r1", "hi", "--think", "-o", "num_predict=6", "-o", "temperature=0", env=env
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("Thinking...\n") and len(shown.stdout) > len("Thinking...\n")
    hidden = cli("run", "tiny-r1", "hi", "--hidethinking", "-o", "num_predict=6", env=env)
    assert hidden.returncode == 0 and "Thinking..." not in hidden.stdout
    assert hidden.stdout.strip() == ""  # all of it was thinking
    refused = cli("run", "tiny", "hi", "--think", env=env)
    assert_one_error(refused, 2, "tiny does not support thinking")


def test_unknown_model_is_not_found(env: dict[str, str], tmp_path: Path) -> None:
    # A local name cannot be pulled: the hint points at what the user has.
    assert_one_error(cli("run", "nothere", "hi", env=env), 3, "not found", "localserve list")
    # And it is refused before any daemon is started for it.
    nowhere = daemon_env(tmp_path / "home", free_port())
    result = cli("run", "nosuch:1", "hi", env=nowhere)
    assert_one_error(result, 3, "'nosuch:1' not found", "localserve import")
    assert "localserve pull" not in result.stderr
    assert not (tmp_path / "home" / "state").exists()


def test_ps_table_json_keepalive_and_stop_model(env: dict[str, str], tiny_gguf_path: Path) -> None:
    from localserve.engine.devices import probe
    from localserve.plan import plan
    from localserve.store.gguf import read_gguf

    # Where the daemon's plan (default settings) puts the model on this machine: "100%
    # CPU" with a CPU-only build, "100% GPU" where llama.cpp can offload.
    expected = plan(read_gguf(tiny_gguf_path), num_ctx=4096, num_parallel=4, devices=probe())
    assert cli("run", "tiny", "hi", "-o", "num_predict=2", env=env).returncode == 0
    table = cli("ps", env=env)
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.strip().splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    [row] = [r for r in rows if r.startswith("tiny:latest")]
    assert expected.processor in row
    assert row.rstrip().endswith("minutes from now")

    [entry] = [
        e for e in json.loads(cli("ps", "--json", env=env).stdout) if e["name"] == "tiny:latest"
    ]
    assert entry["processor"] == expected.processor
    assert entry["context_length"] > 0
    assert len(entry["id"]) == 12 and entry["digest"].startswith(entry["id"])

    assert (
        cli("run", "tiny", "hi", "-o", "num_predict=2", "--keepalive", "-1", env=env).returncode
        == 0
    )
    [forever] = [r for r in cli("ps", env=env).stdout.splitlines() if r.startswith("tiny:latest")]
    assert forever.rstrip().endswith("Forever")

    stopped = cli("stop", "tiny", env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert "unloaded tiny" in stopped.stderr
    assert "tiny:latest" not in cli("ps", env=env).stdout

    assert (
        cli("run", "tiny", "hi", "-o", "num_predict=2", "--keepalive", "0", env=env).returncode == 0
    )
    assert "tiny:latest" not in cli("ps", env=env).stdout  # unloaded right after answering


def test_commands_without_a_daemon(tmp_path: Path) -> None:
    nowhere = daemon_env(tmp_path / "home", free_port())
    assert_one_error(cli("ps", env=nowhere), 6, "localserve is not running", "localserve serve")
    assert_one_error(cli("stop", "tiny", env=nowhere), 6, "localserve is not running")
    version = cli("--version", env=nowhere)
    assert version.returncode == 0
    assert version.stdout.splitlines() == ["localserve version 0.1.0"]
    assert "no daemon answers" in version.stderr


def test_version_names_the_daemon_too(env: dict[str, str], daemon: Daemon) -> None:
    version = cli("--version", env=env)
    assert version.returncode == 0, version.stderr
    assert version.stdout.splitlines() == [
        "localserve version 0.1.0",
        f"localserve daemon version 0.1.0 at {daemon.url}",
    ]


def test_run_starts_the_daemon_when_none_answers(tmp_path: Path, tiny_gguf_path: Path) -> None:
    home = tmp_path / "home"
    user = daemon_env(home, free_port())
    assert cli("import", str(tiny_gguf_path), "tiny", env=user).returncode == 0
    with stopped_afterwards(home):
        first = cli("run", "tiny", "hello", "-o", "num_predict=3", env=user)
        assert first.returncode == 0, first.stderr
        assert first.stderr.splitlines() == ["starting localserve daemon..."]
        assert first.stdout.strip()
        second = cli("run", "tiny", "hello", "-o", "num_predict=3", env=user)
        assert second.returncode == 0 and second.stderr == ""  # already running
        assert "tiny:latest" in cli("ps", env=user).stdout
        stopped = cli("stop", env=user)
        assert stopped.returncode == 0
        assert "stopped localserve" in stopped.stderr
    assert_one_error(cli("ps", env=user), 6, "not running")


def test_run_pulls_a_hub_model_first(
    daemon: Daemon, env: dict[str, str], fake_hub: FakeHub, tiny_gguf_path: Path
) -> None:
    fake_hub.add_repo("tester/run-GGUF", {"run-Q4_K_M.gguf": tiny_gguf_path})
    user = {**env, "HF_ENDPOINT": fake_hub.url}
    user.pop("HF_HUB_OFFLINE", None)
    result = cli("run", "hf.co/tester/run-GGUF", "hi", "-o", "num_predict=3", env=user)
    assert result.returncode == 0, result.stderr
    assert "pulling manifest" in result.stderr and "success" in result.stderr
    assert "run-Q4_K_M.gguf" in result.stderr  # the progress bar names the file
    assert result.stdout.strip()
    served = len(fake_hub.requests)
    again = cli("run", "hf.co/tester/run-GGUF", "hi", "-o", "num_predict=3", env=user)
    assert again.returncode == 0 and again.stderr == ""
    assert len(fake_hub.requests) == served  # in the store now: no second pull


def test_help_lists_every_command_and_imports_nothing_heavy() -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "localserve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for command in ("run", "pull", "import", "list", "ps", "show", "rm", "cp", "serve", "stop"):
        assert f"  {command} " in result.stdout
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()}
    heavy = sorted(m for m in imported if any(m == h or m.startswith(h + ".") for h in HEAVY))
    assert not heavy, heavy
