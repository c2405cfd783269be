"""`localserve worker` processes for tests and benchmarks: start on a free loopback
port, wait until it answers the RPC protocol, stop (SIGCONT first, in case a test
stopped it), never leave one behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from localserve.engine import rpc
from tests.support.daemon import free_port, wait_until

__all__ = ["Worker", "start_worker", "workers"]


@dataclass
class Worker:
    endpoint: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGCONT)  # in case a test stopped it
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_worker(folder: Path, threads: int = 1) -> Worker:
    port = free_port()
    log = folder / f"worker-{port}.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "localserve",
                "worker",
                "--port",
                str(port),
                "--threads",
                str(threads),
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    worker = Worker(f"127.0.0.1:{port}", process, log)

    def answers() -> bool:
        try:
            return bool(rpc.query_worker(worker.endpoint, timeout=2.0))
        except OSError:
            return False

    if not wait_until(lambda: process.poll() is not None or answers(), timeout=60):
        worker.stop()
        raise RuntimeError(f"worker {worker.endpoint} did not answer:\n{log.read_text()}")
    if process.poll() is not None:
        raise RuntimeError(f"worker {worker.endpoint} exited:\n{log.read_text()}")
    return worker


@contextlib.contextmanager
def workers(folder: Path, count: int) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    try:
        for _ in range(count):
            started.append(start_worker(folder))
        yield started
    finally:
        for worker in started:
            worker.stop()
