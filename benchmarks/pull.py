"""Pull throughput: localserve's downloader against curl, same file, same fake Hub, one run.

    python benchmarks/pull.py [--file PATH] [--reps 5] [--connections 4]

Serves the file from the fake Hugging Face server (tests/support/fakehub.py) in its
own process on 127.0.0.1, then alternates `pull_model` (resolve, ranged parallel
download, sha256 verification, manifest) and `curl -L -o FILE` of the same URL,
each into a fresh directory on the same disk. Prints the medians and the ratio
(localserve MB/s / curl MB/s; higher is better). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def default_model() -> Path:
    from tests.support.tiny_gguf import gemma_path

    return gemma_path()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--file", type=Path, default=None, help="GGUF to serve (default: Gemma 3 270M Q4_K_M)"
    )
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--connections", type=int, default=4)
    args = parser.parse_args()

    from localserve.store.download import DownloadOptions
    from localserve.store.pull import pull_model
    from localserve.store.store import ModelStore

    model = (args.file or default_model()).resolve()
    size = model.stat().st_size
    port = free_port()
    work = ROOT / "benchmarks" / ".work"
    work.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.fakehub",
            "--repo",
            f"bench/model-GGUF={model}",
            "--port",
            str(port),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        server.stdout.readline()  # the server prints its URL once it listens
        endpoint = f"http://127.0.0.1:{port}"
        url = f"{endpoint}/bench/model-GGUF/resolve/main/{model.name}"
        ours: list[float] = []
        theirs: list[float] = []
        for _ in range(args.reps):
            target = Path(tempfile.mkdtemp(dir=work))
            start = time.perf_counter()
            for _event in pull_model(
                ModelStore(target),
                f"hf.co/bench/model-GGUF:{model.name}",
                endpoint=endpoint,
                options=DownloadOptions(connections=args.connections),
            ):
                pass
            ours.append(size / (time.perf_counter() - start) / 1e6)
            shutil.rmtree(target)

            target = Path(tempfile.mkdtemp(dir=work))
            start = time.perf_counter()
            subprocess.run(["curl", "-sfL", "-o", str(target / "model.gguf"), url], check=True)
            theirs.append(size / (time.perf_counter() - start) / 1e6)
            shutil.rmtree(target)
    finally:
        server.terminate()
        server.wait()
    ours_median, theirs_median = statistics.median(ours), statistics.median(theirs)
    print(
        f"file: {model.name} ({size / 1e6:.0f} MB), {args.reps} alternating runs, {args.connections} connections"
    )
    print(
        f"localserve pull (sha256 verified): median {ours_median:.0f} MB/s  runs {[round(x) for x in ours]}"
    )
    print(
        f"curl -o (no verification):        median {theirs_median:.0f} MB/s  runs {[round(x) for x in theirs]}"
    )
    print(f"ratio localserve/curl: {ours_median / theirs_median:.2f}")


if __name__ == "__main__":
    main()
