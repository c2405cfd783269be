"""A model's full next-token distributions, loaded locally or split over RPC workers,
for holding one load's numbers against another's (tests/e2e/test_rpc.py,
benchmarks/rpc_numerics.py).

Each load runs in a process of its own (``python -m tests.support.split_logits``):
RPC devices, once registered, stay in a process's ggml registry, and a worker serves
one runner at a time. The process feeds a token sequence in one batch (teacher-forced)
and writes every position's log-probabilities, then decodes greedily, one token per
step, from the sequence's first ``prompt`` tokens.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]


def prose() -> str:
    """English prose that every Python install has: its documentation topics."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


@dataclass(frozen=True)
class Run:
    tokens: list[int]  # the teacher-forced sequence
    logprobs: np.ndarray[Any, np.dtype[np.float32]]  # row i: the distribution after tokens[: i + 1]
    greedy: list[int]  # chosen one token per decode after tokens[:prompt]
    greedy_tok_s: float


def run(
    model: Path,
    *,
    endpoints: Sequence[str] = (),
    layers: int = 0,
    cpu_repack: bool = True,
    tokens: int = 256,
    greedy: int = 64,
    prompt: int = 32,
    threads: int = 1,
    timeout: float = 900,
) -> Run:
    """Load ``model`` with ``layers`` of its layers cut evenly between the workers at
    ``endpoints`` (none: on this machine's CPU), in a new process, and read the first
    ``tokens`` tokens of :func:`prose`."""
    with tempfile.TemporaryDirectory(prefix="split-logits-") as folder:
        out = Path(folder) / "logprobs.npy"
        command = [
            sys.executable,
            "-m",
            "tests.support.split_logits",
            f"--model={model}",
            f"--endpoints={','.join(endpoints)}",
            f"--layers={layers}",
            f"--cpu-repack={'on' if cpu_repack else 'off'}",
            f"--tokens={tokens}",
            f"--greedy={greedy}",
            f"--prompt={prompt}",
            f"--threads={threads}",
            f"--out={out}",
        ]
        done = subprocess.run(
            command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
        meta = json.loads(out.with_suffix(".json").read_text())
        return Run(meta["tokens"], np.load(out), meta["greedy"], meta["greedy_tok_s"])


def kl_divergence(
    reference: np.ndarray[Any, Any], other: np.ndarray[Any, Any]
) -> np.ndarray[Any, np.dtype[np.float64]]:
    """KL(reference || other) of each row (nats), from log-probabilities."""
    p = reference.astype(np.float64)
    q = other.astype(np.float64)
    kl: np.ndarray[Any, np.dtype[np.float64]] = (np.exp(p) * (p - q)).sum(axis=1)
    return kl


# ----------------------------------------------------------- the load's process


def _main() -> None:
    import time

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--endpoints", default="")
    parser.add_argument("--layers", type=int, default=0)
    parser.add_argument("--cpu-repack", choices=("on", "off"), default="on")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--greedy", type=int, default=64)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from localserve.engine.llama import Batch, Context, Model
    from localserve.runtime.options import LoadOptions

    endpoints = [e for e in args.endpoints.split(",") if e]
    split = [args.layers // len(endpoints)] * len(endpoints) if endpoints else []
    if endpoints:
        from localserve.engine.rpc import use_workers

        use_workers(endpoints, timeout=120)
        split[-1] += args.layers - sum(split)
    model = Model(
        [args.model],
        n_gpu_layers=args.layers,
        tensor_split=split,
        cpu_repack=args.cpu_repack == "on",
    )
    tokens = model.tokenize(prose(), add_special=True)[: args.tokens]
    n = len(tokens)
    options = LoadOptions(num_ctx=n + args.greedy + 16, num_parallel=1, num_batch=n)
    context = Context(model, options, n_threads=args.threads)
    batch = Batch(n)
    batch.add(tokens, 0, 0, True, want_all_logits=True)
    if context.decode(batch) != 0:
        raise SystemExit("llama_decode failed")
    rows = np.stack([context.logits(i).astype(np.float64) for i in range(n)])
    peak = rows.max(axis=1, keepdims=True)
    rows -= peak + np.log(np.exp(rows - peak).sum(axis=1, keepdims=True))
    np.save(args.out, rows.astype(np.float32))

    # Greedy from the first ``prompt`` tokens: their cells stay, the last is read again.
    last = tokens[args.prompt - 1]
    context.seq_rm(0, args.prompt - 1, -1)
    step = Batch(1)
    chosen: list[int] = []
    started = time.perf_counter()
    for i in range(args.greedy):
        step.clear()
        step.add([last], args.prompt - 1 + i, 0, True)
        if context.decode(step) != 0:
            raise SystemExit("llama_decode failed")
        last = int(np.argmax(context.logits(0)))
        chosen.append(last)
    elapsed = time.perf_counter() - started
    args.out.with_suffix(".json").write_text(
        json.dumps({"tokens": tokens, "greedy": chosen, "greedy_tok_s": args.greedy / elapsed})
    )
    for handle in (step, batch, context, model):
        handle.close()


if __name__ == "__main__":
    _main()
