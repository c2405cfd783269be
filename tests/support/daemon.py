"""A real localserve daemon for end-to-end tests: ``python -m localserve serve --foreground``.

The daemon runs as its own process on a free loopback port, with its own
LOCALSERVE_HOME holding the tiny model imported as ``tiny``. Stopping it sends
SIGTERM and waits (SIGKILL after 15 s), then checks that it exited cleanly and
that none of its runner children outlived it.

Also a pytest plugin: fixtures ``daemon`` (one daemon per test module; tests must
leave the model named ``tiny`` in place) and ``fresh_daemon`` (one per test, in the
test's isolated home, for tests that break things on purpose).
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from localserve.store.importing import import_gguf
from localserve.store.store import ModelStore

__all__ = [
    "Daemon",
    "add_tool_models",
    "daemon",
    "daemon_env",
    "debug_daemon",
    "free_port",
    "fresh_daemon",
    "rss_kib",
    "running_daemon",
    "start_daemon",
    "stop_daemon",
    "stopped_afterwards",
    "wait_until",
]

# engine/prepare.py's debug line, as the daemon forwards it: "runner PID: prompt of ...".
_PROMPT_LINE = re.compile(r"runner \d+: prompt of \S+ \(\d+ tokens\): ('.*'|\".*\")$")
REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
RUNNER_MODULE = "localserve.engine.runner"


@dataclass
class Daemon:
    url: str
    port: int
    home: Path
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def children(self) -> list[int]:
        """Pids of the daemon's live child processes (its runners)."""
        return [pid for pid in children_of(self.pid) if alive(pid)]

    def kill_runners(self) -> list[int]:
        """SIGKILL every runner of the daemon (a crash, as far as the daemon can tell)."""
        killed = self.children()
        for pid in killed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return killed

    def logged_prompt(self, marker: str, timeout: float = 60.0) -> str:
        """The one prompt holding ``marker`` that a runner logged, as the model read it
        (special tokens written out): runners log each prompt at debug level
        (LOCALSERVE_DEBUG=1 in the daemon's environment), engine/prepare.py. Their log
        reaches the daemon's apart from their answers, so this waits for the line."""
        found: list[str] = []

        def logged() -> bool:
            found[:] = [p for p in self.logged_prompts() if marker in p]
            return bool(found)

        assert wait_until(logged, timeout), f"no prompt with {marker!r}:\n{self.log_tail()}"
        assert len(found) == 1, found
        return found[0]

    def next_logged_prompt(self, seen: int, timeout: float = 60.0) -> str:
        """The one prompt logged after the first ``seen`` (``len(logged_prompts())``
        before a request): for a request whose text cannot carry a marker."""
        assert wait_until(lambda: len(self.logged_prompts()) > seen, timeout), self.log_tail()
        later = self.logged_prompts()[seen:]
        assert len(later) == 1, later
        return later[0]

    def logged_prompts(self) -> list[str]:
        """Every prompt the runners logged so far (see ``logged_prompt``), oldest first."""
        prompts = []
        for line in self.log.read_text(errors="replace").splitlines():
            match = _PROMPT_LINE.search(line)
            if match:
                prompts.append(ast.literal_eval(match.group(1)))
        return prompts

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid``, from /proc/<pid>/task/*/children."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        with contextlib.suppress(OSError):
            found += [int(p) for p in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return sorted(set(found))


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Poll ``condition`` every 50 ms until it holds or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def rss_kib(pid: int | None) -> int | None:
    """VmRSS of ``pid`` in KiB, None when it is gone."""
    if pid is None:
        return None
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


@contextlib.contextmanager
def stopped_afterwards(home: Path) -> Iterator[None]:
    """Whatever happens, stop a daemon the test caused to start in ``home``."""
    try:
        yield
    finally:
        pid_file = home / "state" / "localserve.pid"
        with contextlib.suppress(OSError, ValueError, KeyError):
            pid = int(json.loads(pid_file.read_text())["pid"])
            os.kill(pid, signal.SIGTERM)
            wait_until(lambda: not pid_file.exists(), timeout=15)


def alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped) counts as gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def runners_of_home(home: Path) -> list[int]:
    """Live runner processes anywhere on the machine started for this LOCALSERVE_HOME."""
    marker = f"LOCALSERVE_HOME={home}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            if RUNNER_MODULE.encode() not in cmdline:
                continue
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in environ and alive(int(entry)):
            found.append(int(entry))
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def daemon_env(home: Path, port: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALSERVE_")}
    env.update(
        {
            "LOCALSERVE_HOME": str(home),
            "LOCALSERVE_HOST": f"127.0.0.1:{port}",
            "HF_HOME": str(home.parent / "hf-home"),
            "HF_HUB_OFFLINE": "1",
            "NO_PROXY": "127.0.0.1,localhost",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


def add_model(home: Path, model: Path, name: str, projector: Path | None = None) -> None:
    """Import another model into a (running) daemon's store under ``name``."""
    for _ in import_gguf(ModelStore(home / "models"), model, name, projector):
        pass


def start_daemon(
    home: Path, model: Path | None = None, *, env: dict[str, str] | None = None
) -> Daemon:
    """Import ``model`` as ``tiny`` into ``home``'s store, start the daemon, wait for GET /."""
    if model is not None:
        for _ in import_gguf(ModelStore(home / "models"), model, "tiny"):
            pass
    port = free_port()
    log = home / "daemon-test.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "localserve", "serve", "--foreground"],
            cwd=REPO_ROOT,
            env=daemon_env(home, port, env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    started = Daemon(f"http://127.0.0.1:{port}", port, home, process, log)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the daemon exited at start:\n{started.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(started.url + "/", timeout=1.0, trust_env=False).status_code == 200:
                return started
        time.sleep(0.05)
    stop_daemon(started, check=False)
    raise RuntimeError(
        f"the daemon did not answer within {START_TIMEOUT:.0f}s:\n{started.log_tail()}"
    )


def stop_daemon(started: Daemon, *, check: bool = True) -> None:
    """SIGTERM, wait (SIGKILL after STOP_TIMEOUT); then check nothing it started survives."""
    process = started.process
    runners = children_of(started.pid)
    killed = False
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            killed = True
            process.kill()
            process.wait()
    # Runners die with the daemon (PR_SET_PDEATHSIG) or are stopped by it; give a
    # dying one a moment to go.
    deadline = time.monotonic() + 5.0
    survivors = [p for p in runners if alive(p)] + runners_of_home(started.home)
    while survivors and time.monotonic() < deadline:
        time.sleep(0.05)
        survivors = [p for p in runners if alive(p)] + runners_of_home(started.home)
    for pid in set(survivors):  # never leave one behind, even when the check fails
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if not check:
        return
    assert not killed, f"the daemon ignored SIGTERM for {STOP_TIMEOUT:.0f}s:\n{started.log_tail()}"
    assert process.returncode == 0, (
        f"the daemon exited with {process.returncode}:\n{started.log_tail()}"
    )
    assert not survivors, f"runner processes outlived the daemon: {sorted(set(survivors))}"


@contextlib.contextmanager
def running_daemon(
    home: Path, model: Path | None = None, *, env: dict[str, str] | None = None
) -> Iterator[Daemon]:
    started = start_daemon(home, model, env=env)
    try:
        yield started
    finally:
        stop_daemon(started)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, tiny_gguf_path: Path) -> Iterator[Daemon]:
    """One daemon for the whole test module, serving the tiny model as ``tiny``."""
    home = tmp_path_factory.mktemp("daemon") / "localserve-home"
    with running_daemon(home, tiny_gguf_path) as started:
        yield started


def add_tool_models(home: Path, folder: Path) -> dict[str, str]:
    """Tiny models with templates that take tools and think, added to the store in
    ``home``: ``tiny-tools`` (Qwen 3 style: Hermes calls, <think>) and ``tiny-r1`` (the
    prompt opens the thinking block, so every answer starts as reasoning)."""
    from tests.support import chat_templates
    from tests.support.tiny_gguf import write_tiny_gguf

    models = {"tiny-tools": chat_templates.QWEN3, "tiny-r1": chat_templates.R1}
    for name, template in models.items():
        add_model(home, write_tiny_gguf(folder / f"{name}.gguf", chat_template=template), name)
    return {name: name for name in models}


@pytest.fixture(scope="module")
def tool_models(daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The tool models (``add_tool_models``), added to ``daemon``."""
    return add_tool_models(daemon.home, tmp_path_factory.mktemp("tool-models"))


@pytest.fixture(scope="module")
def debug_daemon(
    tmp_path_factory: pytest.TempPathFactory, tiny_gguf_path: Path
) -> Iterator[Daemon]:
    """A daemon of the module's own, with LOCALSERVE_DEBUG=1, so that its runners log
    every prompt (``Daemon.logged_prompt``): ``tiny`` and the tool models."""
    home = tmp_path_factory.mktemp("debug-daemon") / "localserve-home"
    with running_daemon(home, tiny_gguf_path, env={"LOCALSERVE_DEBUG": "1"}) as started:
        add_tool_models(home, tmp_path_factory.mktemp("debug-tool-models"))
        yield started


@pytest.fixture
def fresh_daemon(isolated_home: Path, tiny_gguf_path: Path) -> Iterator[Daemon]:
    """A daemon of this test's own, in its isolated home (LOCALSERVE_HOME)."""
    with running_daemon(isolated_home, tiny_gguf_path) as started:
        yield started
