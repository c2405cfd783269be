"""Model load time with a cold and a warm page cache.

- localserve: an empty-prompt /api/generate on a running daemon whose model was just
  unloaded (keep_alive 0): the daemon's own ``load_duration`` (runner start, model
  load, KV cache) and the request's wall time.
- llama-server and llama_cpp.server: from starting the process until its health
  endpoint answers (process start, model load, KV cache).

Cold: before each cold measurement the GGUF leaves the page cache, through
/proc/sys/vm/drop_caches (all clean pages: the model, Python, the libraries) when it
may be written, or else ``posix_fadvise(POSIX_FADV_DONTNEED)`` on the model file
(only the model; needs no privileges). Pages mapped by a running process stay
resident either way, so the report shows how much of the file was still cached
(``fincore``) and which other processes had it mapped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from benchmarks.peers import start_llama_cpp_python, start_llama_server, stop
from benchmarks.servers import LocalserveHTTP


def evict(files: list[Path]) -> str:
    """Drop ``files`` from the page cache; returns the method used."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return "drop_caches"
    except OSError:
        for path in files:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        return "fadvise"


def cached_mb(files: list[Path]) -> float | None:
    """How much of ``files`` is in the page cache (None without util-linux's fincore)."""
    if shutil.which("fincore") is None:
        return None
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", *map(str, files)],
        capture_output=True,
        text=True,
        check=True,
    )
    return sum(int(size) for size in out.stdout.split()) / 2**20


def mapped_by(files: list[Path]) -> list[int]:
    """Processes that have any of ``files`` mapped (those pages cannot be evicted).
    Matched by device and inode: the same file may be mapped under another name (a
    hard link in some localserve store)."""
    wanted = set()
    for path in files:
        st = path.stat()
        wanted.add((f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}", str(st.st_ino)))
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            maps = (entry / "maps").read_text()
        except OSError:
            continue
        for line in maps.splitlines():
            fields = line.split()
            if len(fields) >= 5 and (fields[3], fields[4]) in wanted:
                pids.append(int(entry.name))
                break
    return pids


def distinct_files(paths: list[Path]) -> list[Path]:
    """``paths`` less any hard link to one already listed."""
    seen, files = set(), []
    for path in paths:
        st = path.stat()
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            files.append(path)
    return files


async def measure(
    model: Path, peers: list[str], parallel: int, ctx: int, threads: int, reps: int
) -> dict[str, Any]:
    """Cold and warm load times, ``reps`` of each, servers alternating; raw values."""
    times: dict[str, dict[str, list[float]]] = {}
    methods: set[str] = set()
    cached_after_evict: list[float] = []
    mappers: set[int] = set()

    daemon = LocalserveHTTP(model, parallel, ctx, threads)
    await daemon.start()
    try:
        # The daemon's store holds a hard link to the model, or a copy: evict both.
        blobs = sorted(Path(daemon.home, "models", "blobs").iterdir())
        files = distinct_files([model, *blobs])

        async def localserve() -> dict[str, float]:
            wall, load = await daemon.load_model()
            await daemon.unload_model()
            return {"localserve-http": load, "localserve-http (wall)": wall}

        async def llama_server() -> dict[str, float]:
            t0 = time.perf_counter()
            process, _ = start_llama_server(model, parallel=parallel, ctx_per_slot=ctx, threads=threads)  # fmt: skip
            elapsed = time.perf_counter() - t0
            stop(process)
            return {"llama-server": elapsed}

        async def llama_cpp_python() -> dict[str, float]:
            t0 = time.perf_counter()
            process, _ = start_llama_cpp_python(model, ctx=ctx, threads=threads)
            elapsed = time.perf_counter() - t0
            stop(process)
            return {"llama-cpp-python": elapsed}

        loaders = [localserve]
        if "llama-server" in peers:
            loaders.append(llama_server)
        if "llama-cpp-python" in peers:
            loaders.append(llama_cpp_python)
        for rep in range(reps):
            for state in ("cold", "warm"):
                for load in loaders if rep % 2 == 0 else reversed(loaders):
                    if state == "cold":
                        methods.add(evict(files))
                        mb = cached_mb(files)
                        if mb is not None:
                            cached_after_evict.append(mb)
                        mappers.update(mapped_by(files))
                    for name, seconds in (await load()).items():
                        times.setdefault(name, {"cold": [], "warm": []})[state].append(seconds)
    finally:
        await daemon.close()
    return {
        "times": times,
        "evict_method": "+".join(sorted(methods)),
        "cached_after_evict_mb_max": max(cached_after_evict) if cached_after_evict else None,
        "processes_mapping_model": sorted(mappers),
    }
