"""The peers we measure against, built from the very llama.cpp that localserve runs.

    python benchmarks/peers.py            # build (or reuse) llama-server, llama-bench, llama-batched-bench

They come from the source release of the llama-cpp-python version pyproject.toml
pins (its vendor/llama.cpp), downloaded with pip and built with CMake under
benchmarks/.work/ (ignored by git; nothing built is committed). The third peer,
llama-cpp-python's own server (``python -m llama_cpp.server``), is that pinned
package itself, installed with the ``server`` extra.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / ".work"
TARGETS = ("llama-server", "llama-bench", "llama-batched-bench")


def pinned_version() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    match = re.search(r'"llama-cpp-python==([^"]+)"', text)
    if not match:
        raise SystemExit("pyproject.toml does not pin llama-cpp-python exactly")
    return match.group(1)


def source_dir() -> Path:
    version = pinned_version()
    source = WORK / f"llama_cpp_python-{version}"
    if not (source / "vendor" / "llama.cpp" / "CMakeLists.txt").is_file():
        WORK.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"llama-cpp-python=={version}",
                "-d",
                str(WORK),
            ],
            check=True,
        )
        subprocess.run(
            ["tar", "xzf", str(WORK / f"llama_cpp_python-{version}.tar.gz"), "-C", str(WORK)],
            check=True,
        )
    return source / "vendor" / "llama.cpp"


def binary(name: str) -> Path:
    """Path of a built peer, building them all first if needed (about 7 minutes on 2 cores)."""
    build = WORK / "peers-build"
    path = build / "bin" / name
    if not path.is_file():
        source = source_dir()
        # Without AMX, as scripts/llama-wheel builds localserve's own llama.cpp (some
        # virtual machines advertise it and then fault on its first instruction).
        flags = (
            "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" if platform.machine() == "x86_64" else ""
        )
        subprocess.run(
            ["cmake", "-S", str(source), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_BUILD_SERVER=ON",
             "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
             f"-DCMAKE_C_FLAGS={flags}", f"-DCMAKE_CXX_FLAGS={flags}"],
            check=True,
        )  # fmt: skip
        jobs = str(os.cpu_count() or 2)
        subprocess.run(
            ["cmake", "--build", str(build), "-j", jobs, "--target", *TARGETS], check=True
        )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(
    url: str, timeout: float = 120.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until GET ``url`` answers 200. Polls often (50 ms) with one client (a new
    one per poll costs tens of ms): load times are timed by it."""
    import httpx

    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2) as client:
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"{url}: the server exited with status {process.returncode}")
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not come up")


def _wait_or_kill(process: subprocess.Popen[bytes], url: str) -> None:
    try:
        wait_http(url, process=process)
    except BaseException:
        process.kill()
        process.wait()
        raise


def start_llama_server(
    model: Path, *, parallel: int, ctx_per_slot: int, threads: int, extra: Sequence[str] = ()
) -> tuple[subprocess.Popen[bytes], str]:
    """llama-server with one unified KV cache, as its docs recommend for many streams."""
    port = free_port()
    process = subprocess.Popen(
        [str(binary("llama-server")), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
         "-np", str(parallel), "-c", str(ctx_per_slot * parallel), "-kvu", "-t", str(threads), "-tb", str(threads),
         "--no-webui", "--log-disable", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    _wait_or_kill(process, url + "/health")
    return process, url


def start_llama_cpp_python(
    model: Path, *, ctx: int, threads: int
) -> tuple[subprocess.Popen[bytes], str]:
    """llama-cpp-python's own server (the same llama.cpp build localserve uses). It
    serves one request at a time; ``--interrupt_requests False`` makes a new request
    wait for the current one instead of cutting its stream short."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
         "--n_ctx", str(ctx), "--n_threads", str(threads), "--n_threads_batch", str(threads),
         "--interrupt_requests", "False", "--use_mlock", "False", "--verbose", "False"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    _wait_or_kill(process, url + "/v1/models")
    return process, url


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


if __name__ == "__main__":
    for target in TARGETS:
        print(binary(target))
    shutil.which("cmake") or print("cmake is needed to build the peers")
