"""The daemon as a real background process: start, refuse a second, stale pid files,
unsafe binds, busy ports, SIGTERM mid-stream, SIGKILL with models loaded."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.cli import cli
from tests.support.daemon import alive, children_of, free_port, wait_until


@pytest.fixture
def port(monkeypatch: pytest.MonkeyPatch) -> int:
    chosen = free_port()
    monkeypatch.setenv("LOCALSERVE_HOST", f"127.0.0.1:{chosen}")
    return chosen


@pytest.fixture
def with_tiny(tiny_gguf_path: Path) -> str:
    result = cli("import", str(tiny_gguf_path), "tiny")
    assert result.returncode == 0, result.stderr
    return "tiny"


@pytest.fixture
def daemon(port: int, isolated_home: Path) -> Iterator[int]:
    """A detached daemon, stopped (or killed) afterwards whatever the test did."""
    started = cli("serve")
    assert started.returncode == 0, started.stderr
    pid = json.loads((isolated_home / "state" / "localserve.pid").read_text())["pid"]
    yield pid
    if alive(pid):
        cli("stop")
    if alive(pid):
        os.kill(pid, signal.SIGKILL)


def test_serve_twice_then_stop(daemon: int, port: int, isolated_home: Path) -> None:
    pid_file = isolated_home / "state" / "localserve.pid"
    assert json.loads(pid_file.read_text())["port"] == port
    assert httpx.get(f"http://127.0.0.1:{port}/").text == "localserve is running"
    again = cli("serve")
    assert again.returncode == 0
    assert f"already running at http://127.0.0.1:{port} (pid {daemon})" in again.stderr
    log = isolated_home / "state" / "logs" / "daemon.log"
    assert log.is_file()
    # Other local users may not read the pid file, lock or log.
    assert stat.S_IMODE((isolated_home / "state").stat().st_mode) == 0o700
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    stopped = cli("stop")
    assert stopped.returncode == 0 and f"pid {daemon}" in stopped.stderr
    assert wait_until(lambda: not alive(daemon))
    assert not pid_file.exists()
    assert "not running" in cli("stop").stderr


def test_racing_starts_all_report_the_daemon_that_serves(
    port: int, isolated_home: Path, with_tiny: str
) -> None:
    """Three `serve` and two `run` at the same moment (a login script and a user):
    one daemon starts, and every racer names its pid."""
    commands = [["serve"]] * 3 + [["run", with_tiny, "hi", "-o", "num_predict=1"]] * 2
    racers = [
        subprocess.Popen(
            [sys.executable, "-m", "localserve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "COLUMNS": "200"},
        )
        for args in commands
    ]
    pid_file = isolated_home / "state" / "localserve.pid"
    try:
        results = [racer.communicate(timeout=120) for racer in racers]
        assert all(r.returncode == 0 for r in racers), results
        serving = json.loads(pid_file.read_text())["pid"]
        assert alive(serving)
        for racer, (_, err) in zip(racers, results, strict=True):
            if racer.args[3] == "serve":
                pids = re.findall(r"\(pid (\d+)\)", err)
                assert pids == [str(serving)], err
        # The losers' children found the lock held and exited; one daemon is left.
        every = [int(name) for name in os.listdir("/proc") if name.isdigit()]
        daemons = [
            p
            for p in every
            if "serve --foreground" in _cmdline(p) and _environ_host(p).endswith(f":{port}")
        ]
        assert set(daemons) == {serving}
    finally:
        cli("stop")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _environ_host(pid: int) -> str:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return ""
    return next((e.decode() for e in environ if e.startswith(b"LOCALSERVE_HOST=")), "")


def test_stale_pid_file_does_not_block_a_start(port: int, isolated_home: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    state = isolated_home / "state"
    state.mkdir(parents=True)
    (state / "localserve.pid").write_text(
        json.dumps({"pid": dead.pid, "host": "127.0.0.1", "port": port})
    )
    started = cli("serve")
    try:
        assert started.returncode == 0, started.stderr
        assert "already running" not in started.stderr
        assert json.loads((state / "localserve.pid").read_text())["pid"] != dead.pid
    finally:
        cli("stop")


def test_public_bind_needs_an_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALSERVE_HOST", f"0.0.0.0:{free_port()}")
    result = cli("serve", "--foreground", timeout=30)
    assert result.returncode != 0
    assert "refusing to listen on 0.0.0.0" in result.stderr
    assert "LOCALSERVE_API_KEY" in result.stderr
    assert "Traceback" not in result.stderr


def test_busy_port_is_a_clear_error(port: int) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        result = cli("serve", "--foreground", timeout=30)
    assert result.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_sigterm_ends_streams_with_an_error_line(
    daemon: int, port: int, with_tiny: str, isolated_home: Path
) -> None:
    body = {
        "model": with_tiny,
        "prompt": "Once",
        "raw": True,
        "options": {"num_predict": 1_000_000, "ignore_eos": True},  # never ends by itself
    }
    lines: list[dict[str, object]] = []
    with httpx.stream(
        "POST", f"http://127.0.0.1:{port}/api/generate", json=body, timeout=60
    ) as response:
        for line in response.iter_lines():
            lines.append(json.loads(line))
            if len(lines) == 3:
                runners = children_of(daemon)
                assert runners, "no runner process"
                os.kill(daemon, signal.SIGTERM)
    assert lines[-1].get("error"), lines[-3:]
    assert "shutting down" in str(lines[-1]["error"])
    assert wait_until(lambda: not alive(daemon))
    assert all(not alive(pid) for pid in runners)
    assert not (isolated_home / "state" / "localserve.pid").exists()


def test_sigkilled_daemon_takes_its_runners_and_restarts_cleanly(
    daemon: int, port: int, with_tiny: str
) -> None:
    answer = httpx.post(
        f"http://127.0.0.1:{port}/api/generate",
        json={"model": with_tiny, "prompt": "hi", "stream": False, "options": {"num_predict": 2}},
        timeout=60,
    )
    assert answer.status_code == 200
    runners = children_of(daemon)
    assert runners
    os.kill(daemon, signal.SIGKILL)
    assert wait_until(lambda: not alive(daemon))
    assert wait_until(lambda: all(not alive(pid) for pid in runners)), (
        "a runner outlived the daemon"
    )
    restarted = cli("serve")
    try:
        assert restarted.returncode == 0, restarted.stderr
        assert "already running" not in restarted.stderr
        again = httpx.post(
            f"http://127.0.0.1:{port}/api/generate",
            json={
                "model": with_tiny,
                "prompt": "hi",
                "stream": False,
                "options": {"num_predict": 2},
            },
            timeout=60,
        )
        assert again.status_code == 200
    finally:
        cli("stop")
