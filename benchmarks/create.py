"""Custom models: what `create` writes, and what an adapter costs at load.

    python benchmarks/create.py [--reps 5]

Gemma 3 270M (~250 MB) imported into a fresh store, then:

1. `create` of a derived model (FROM it, PARAMETER, SYSTEM, MESSAGE): wall time and the
   bytes it added to blobs/ (it must not copy the base);
2. load time of the base against the same base with one LoRA adapter (rank 16 on every
   attention and FFN matrix, generated with the `gguf` package for Gemma's shapes),
   each loaded and unloaded in turn through one daemon (`load_duration` of an empty
   /api/generate); the ratio of the medians is adapter / base.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from localserve.store.create import create_model
from localserve.store.modelfile import parse_modelfile
from localserve.store.store import ModelStore
from tests.support.daemon import start_daemon, stop_daemon
from tests.support.tiny_gguf import gemma_path
from tests.support.tiny_lora import write_tiny_lora

MODELFILE = (
    "FROM tiny\nPARAMETER temperature 0.3\nPARAMETER num_ctx 2048\n"
    'SYSTEM """You answer in one line."""\nMESSAGE user Hi\nMESSAGE assistant Hello.\n'
)


def blob_bytes(store: ModelStore) -> int:
    return sum(p.stat().st_size for p in store.blobs_dir.iterdir())


def load_ms(client: httpx.Client, model: str) -> float:
    loaded = client.post("/api/generate", json={"model": model, "stream": False}).json()
    client.post("/api/generate", json={"model": model, "keep_alive": 0, "stream": False})
    return float(loaded["load_duration"]) / 1e6


def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder) / "home"
        daemon = start_daemon(home, gemma_path())
        try:
            store = ModelStore(home / "models")
            before = blob_bytes(store)
            started = time.perf_counter()
            for _ in create_model(
                store, "derived", parse_modelfile(MODELFILE), folder=Path(folder)
            ):
                pass
            took = time.perf_counter() - started
            print(
                f"create from a {before / 1e6:.0f} MB base: {took * 1000:.0f} ms, "
                f"{blob_bytes(store) - before} bytes written to blobs/"
            )
            lora = write_tiny_lora(
                Path(folder) / "lora.gguf",
                base=gemma_path(),
                rank=16,
                architecture="gemma3",
                targets=("attn_q", "attn_k", "attn_v", "attn_output", "ffn_up", "ffn_down"),
            )
            spec = parse_modelfile(f"FROM tiny\nADAPTER {lora}\n")
            for _ in create_model(store, "tuned", spec, folder=Path(folder)):
                pass
            print(f"adapter: {lora.stat().st_size / 1e6:.1f} MB")
            times: dict[str, list[float]] = {"tiny": [], "tuned": []}
            with httpx.Client(base_url=daemon.url, timeout=600) as client:
                load_ms(client, "tiny")  # warm the page cache
                load_ms(client, "tuned")
                for rep in range(args.reps):
                    for model in ("tiny", "tuned") if rep % 2 == 0 else ("tuned", "tiny"):
                        times[model].append(load_ms(client, model))
            base, tuned = statistics.median(times["tiny"]), statistics.median(times["tuned"])
            print(
                f"load: base {base:.0f} ms, with the adapter {tuned:.0f} ms: "
                f"ratio {tuned / base:.2f}"
            )
        finally:
            stop_daemon(daemon)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    main(parser.parse_args())
