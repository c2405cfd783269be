"""Running the daemon: in the foreground, or detached with a pid file and a log file.

::

    <state dir>/localserve.pid     {"pid", "host", "port", "version"} of the running daemon
    <state dir>/localserve.lock    held by the running daemon (two can never run at once)
    <state dir>/localserve.start.lock  held while one process starts the daemon
    <state dir>/logs/daemon.log    a detached daemon's output

A pid file whose process is gone (the daemon was killed) is stale and ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localserve import __version__
from localserve.config import Settings, is_loopback
from localserve.errors import LocalserveError

log = logging.getLogger("localserve.daemon")


class DaemonError(LocalserveError):
    """The daemon cannot start (address in use, unsafe bind) or stop."""


@dataclass(frozen=True)
class DaemonInfo:
    pid: int
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def pid_path(settings: Settings) -> Path:
    return settings.state_dir / "localserve.pid"


def log_path(settings: Settings) -> Path:
    return settings.state_dir / "logs" / "daemon.log"


def running_daemon(settings: Settings) -> DaemonInfo | None:
    """The daemon recorded in the pid file, if that process still exists."""
    try:
        data = json.loads(pid_path(settings).read_text())
        info = DaemonInfo(int(data["pid"]), str(data["host"]), int(data["port"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not _process_alive(info.pid):
        return None  # stale: the daemon was killed without cleaning up
    return info


def answers(host: str, port: int, timeout: float = 1.0) -> bool:
    import httpx

    target = f"[{host}]" if ":" in host else host
    try:
        response = httpx.get(f"http://{target}:{port}/", timeout=timeout, trust_env=False)
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and response.text.startswith("localserve")


def check_bind(settings: Settings) -> None:
    host, _ = settings.bind
    if not is_loopback(host) and settings.api_key is None:
        raise DaemonError(
            f"refusing to listen on {host}: anyone on the network could use it",
            hint="set LOCALSERVE_API_KEY to require a key, or bind 127.0.0.1",
        )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets that
    # say they are TCP, and with Nagle on, a response's body waits ~40 ms for the
    # client's delayed ACK of its headers.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise DaemonError(
            f"cannot listen on {host}:{port}: {exc.strerror}",
            hint="another program uses that port; set LOCALSERVE_HOST to another address",
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve_foreground(settings: Settings) -> None:
    """Run the daemon in this process until SIGINT/SIGTERM; keeps the pid file meanwhile."""
    import uvicorn
    from filelock import FileLock, Timeout

    from localserve.server.app import create_app

    check_bind(settings)
    host, port = settings.bind
    # Owner-only: the pid file, the lock and the log are nobody else's business.
    settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = FileLock(str(settings.state_dir / "localserve.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        other = running_daemon(settings)
        where = f" at {other.url} (pid {other.pid})" if other else ""
        raise DaemonError(f"localserve is already running{where}") from None
    try:
        sock = _bind(host, port)
        _write_pid(settings, DaemonInfo(os.getpid(), host, port))
        app = create_app(settings)

        class Server(uvicorn.Server):
            """Ends in-flight streams promptly on SIGTERM/SIGINT: the scheduler stops the
            runners first, so each open stream gets its error line and closes, instead
            of uvicorn waiting for long generations to finish."""

            def handle_exit(self, sig: int, frame: Any) -> None:
                with contextlib.suppress(RuntimeError):  # no running loop: nothing to drain
                    self.draining = asyncio.get_running_loop().create_task(
                        app.state.scheduler.close()
                    )
                super().handle_exit(sig, frame)

        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=settings.debug,
            timeout_graceful_shutdown=10,
            lifespan="on",
        )
        server = Server(config)
        # uvicorn re-raises the signal that stopped it once it has shut down, so that
        # the process ends as the signal says; with the default SIGTERM action that
        # would kill us before the pid file is removed. These handlers let it return.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)
        log.info(
            "localserve %s listening on %s", __version__, DaemonInfo(os.getpid(), host, port).url
        )
        server.run(sockets=[sock])
    finally:
        with contextlib.suppress(FileNotFoundError):
            pid_path(settings).unlink()
        lock.release()


def _write_pid(settings: Settings, info: DaemonInfo) -> None:
    from localserve.store.store import atomic_write

    data = {"pid": info.pid, "host": info.host, "port": info.port, "version": __version__}
    atomic_write(pid_path(settings), json.dumps(data).encode())


def start_detached(settings: Settings, timeout: float = 60.0) -> DaemonInfo:
    """Start ``localserve serve --foreground`` in its own session; return once it answers.

    Starting is atomic: a start lock is held from the check for a running daemon until
    the new one answers, so several ``serve`` or ``run`` started at the same moment
    start one daemon, and every one of them reports that daemon's pid (without the
    lock each spawned a child, the losers' children exited, and their pids were
    printed all the same).
    """
    from filelock import FileLock

    check_bind(settings)
    # Owner-only (mkdir's mode applies to the last directory only, hence two calls).
    settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with FileLock(str(settings.state_dir / "localserve.start.lock"), timeout=timeout):
        running = running_daemon(settings)
        if running is not None and answers(running.host, running.port):
            return running  # another starter won the race: this is the daemon
        return _spawn(settings, timeout)


def _spawn(settings: Settings, timeout: float) -> DaemonInfo:
    host, port = settings.bind
    log_file = log_path(settings)
    log_file.parent.mkdir(mode=0o700, exist_ok=True)
    with open(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "localserve", "serve", "--foreground"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,  # not killed by the terminal's Ctrl+C or hang-up
            close_fds=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DaemonError(
                f"the daemon exited at start: {_last_line(log_file)}", hint=f"see {log_file}"
            )
        if answers(host, port, timeout=0.5):
            # The pid file names the process that serves (ours, unless a daemon
            # started outside this lock got the port first).
            return running_daemon(settings) or DaemonInfo(process.pid, host, port)
        time.sleep(0.1)
    process.terminate()
    raise DaemonError(f"the daemon did not answer within {timeout:.0f}s", hint=f"see {log_file}")


def stop_daemon(settings: Settings, timeout: float = 30.0) -> DaemonInfo | None:
    """SIGTERM the running daemon and wait for it to go; None if none was running."""
    info = running_daemon(settings)
    if info is None:
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running_daemon(settings) is None or not _process_alive(info.pid):
            return info
        time.sleep(0.05)
    raise DaemonError(
        f"localserve (pid {info.pid}) did not stop within {timeout:.0f}s",
        hint=f"kill -9 {info.pid}",
    )


def _process_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):  # no /proc (macOS): ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # alive, but another user's
        return True
    return state not in ("Z", "X")  # a zombie has exited; only its parent has not noticed


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"
