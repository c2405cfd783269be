"""How far a model split over RPC workers computes from a local load, and what
LOCALSERVE_CPU_REPACK=false (which makes them compute alike) costs.

    python benchmarks/rpc_numerics.py [--model PATH] [--tokens 256] [--greedy 64]
        [--threads 1] [--reps 3] [--llama-bin DIR] [--json FILE]

Numbers: one token sequence (English prose, Python's documentation topics, cut to
``--tokens``) is fed to each setup in one batch (teacher-forced), and every
position's full next-token distribution is kept (tests/support/split_logits.py, one
process per load). Each setup is held against a local load: the mean and largest KL
divergence per position (nats), the largest difference of a log-probability among
the reference's 40 likeliest tokens of each position, how often the top token
agrees, and whether the arrays are bit for bit equal. Greedy: ``--greedy`` tokens
decoded one at a time from the sequence's first 32, and the first step where a
setup's choice leaves the reference's.

Setups: "local" (every layer on this machine's CPU), "1 worker" (half the
offloadable layers on one `localserve worker`), "2 workers" (two thirds on two, a
third each), and each of them again with the CPU's repacked weights off
(``cpu_repack=False``, what LOCALSERVE_CPU_REPACK=false does in a runner). Workers
run ggml's plain CPU kernels; a local load by default the repacked ones (llama.cpp's
"extra buffer types"). Every load and worker uses ``--threads`` threads: the CPU's
flash attention cuts a long cache (512 cells or more) between threads, so their
number changes the sums of a decode step too.

llama.cpp's own split, with ``--llama-bin`` (a folder with ``llama-perplexity`` and
``ggml-rpc-server`` from a build with -DGGML_RPC=ON, see docs/scale.md): the same
setups through ``llama-perplexity --kl-divergence`` (``--rpc``, ``-ngl``, ``-ts``, and
``-nr`` for no repacking) over 4 chunks of 256 tokens of the same prose (it scores the
second half of each chunk: 512 positions) against its local run's
``--kl-divergence-base``; its own ``ggml-rpc-server`` workers. It stores the
reference's log-probabilities in 16 bits, so an identical computation shows a
largest KL of about 4e-5, not 0.

Cost: two daemons, one with LOCALSERVE_CPU_REPACK=false, both on the CPU alone;
each round sends both the same prompt of about 512 tokens (new each round, so no
cache helps) and 64 greedy tokens; prompt and decode tok/s from the daemon's own
counts, medians over ``--reps`` rounds, alternating which daemon goes first.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import statistics
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


from benchmarks import rpc as rpc_benchmark  # noqa: E402
from localserve.engine import rpc  # noqa: E402
from localserve.store.gguf import read_gguf_model  # noqa: E402
from tests.support.daemon import Daemon, free_port, start_daemon, stop_daemon, wait_until  # noqa: E402
from tests.support.split_logits import Run, kl_divergence, prose, run  # noqa: E402
from tests.support.workers import start_worker  # noqa: E402

WORK = ROOT / "benchmarks" / ".work" / "rpc_numerics"
TOP = 40  # the reference's likeliest tokens per position whose log-probabilities are compared


def compare(reference: Run, other: Run) -> dict[str, Any]:
    p, q = reference.logprobs.astype(np.float64), other.logprobs.astype(np.float64)
    kl = kl_divergence(p, q)
    top = np.argsort(-p, axis=1)[:, :TOP]
    rows = np.arange(len(p))[:, None]
    diff = np.abs(p[rows, top] - q[rows, top])
    diverges = next(
        (i for i, (a, b) in enumerate(zip(reference.greedy, other.greedy, strict=True)) if a != b),
        None,
    )
    return {
        "kl_mean": float(kl.mean()),
        "kl_max": float(kl.max()),
        "logprob_diff_max": float(diff.max()),
        "top1_agree": float((p.argmax(axis=1) == q.argmax(axis=1)).mean()),
        "identical": bool(np.array_equal(reference.logprobs, other.logprobs)),
        "greedy_diverges_at": diverges,
    }


def numbers(args: argparse.Namespace) -> tuple[list[dict[str, Any]], int]:
    n_layers = (read_gguf_model([args.model]).block_count or 0) + 1
    shapes = [("local", 0, 0), ("1 worker", 1, n_layers // 2), ("2 workers", 2, 2 * n_layers // 3)]
    runs: dict[str, Run] = {}
    with ExitStack() as stack:
        workers = []
        for _ in range(2):
            w = start_worker(WORK, threads=args.threads)
            stack.callback(w.stop)
            workers.append(w)
        for repack in (True, False):
            for name, count, layers in shapes:
                label = name if repack else f"{name}, no repack"
                runs[label] = run(
                    args.model,
                    endpoints=[w.endpoint for w in workers[:count]],
                    layers=layers,
                    cpu_repack=repack,
                    tokens=args.tokens,
                    greedy=args.greedy,
                    threads=args.threads,
                )
                print(f"{label}: done", file=sys.stderr)
    table = []
    for reference in ("local", "local, no repack"):
        for name, other in runs.items():
            if name != reference:
                table.append(
                    {"reference": reference, "setup": name, **compare(runs[reference], other)}
                )
    return table, len(runs["local"].tokens)


def llama_cpp_split(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The same comparison through llama.cpp's own tools (llama-perplexity, --rpc)."""
    n_layers = (read_gguf_model([args.model]).block_count or 0) + 1
    text = WORK / "prose.txt"
    text.write_text(prose())
    common = ["-m", str(args.model), "-f", str(text), "-c", "256", "-b", "256", "--chunks", "4"]
    common += ["-t", str(args.threads)]
    table: list[dict[str, Any]] = []
    with ExitStack() as stack:
        endpoints: list[str] = []
        for _ in range(2):
            port = free_port()
            log = open(WORK / f"ggml-rpc-server-{port}.log", "wb")  # noqa: SIM115
            stack.callback(log.close)
            command = [str(args.llama_bin / "ggml-rpc-server"), "-p", str(port)]
            server = subprocess.Popen(
                [*command, "-t", str(args.threads)], stdout=log, stderr=subprocess.STDOUT
            )
            stack.callback(server.wait)
            stack.callback(server.terminate)
            endpoint = f"127.0.0.1:{port}"
            assert wait_until(functools.partial(_answers, endpoint), timeout=30), endpoint
            endpoints.append(endpoint)
        one, two = n_layers // 2, 2 * n_layers // 3
        half = two // 2  # as tests/support/split_logits.py cuts them: the last takes the rest
        cut = f"{half},{two - half}"
        setups = {
            "local": [],
            "1 worker": ["--rpc", endpoints[0], "-ngl", str(one)],
            "2 workers": ["--rpc", ",".join(endpoints), "-ngl", str(two), "-ts", cut],
        }
        setups |= {f"{name}, no repack": [*flags, "-nr"] for name, flags in setups.items()}

        def perplexity(*flags: str) -> str:
            done = subprocess.run(
                [str(args.llama_bin / "llama-perplexity"), *common, *flags],
                capture_output=True,
                text=True,
                check=True,
            )
            return done.stdout + done.stderr

        for reference in ("local", "local, no repack"):
            base = WORK / f"base-{len(table)}.kld"
            perplexity(*setups[reference], "--kl-divergence-base", str(base))
            for name, flags in setups.items():
                if name == reference:
                    continue
                out = perplexity(*flags, "--kl-divergence-base", str(base), "--kl-divergence")
                table.append({"reference": reference, "setup": name, **_kld_summary(out)})
                print(f"llama.cpp: {name} against {reference}: done", file=sys.stderr)
    return table


def _answers(endpoint: str) -> bool:
    try:
        return bool(rpc.query_worker(endpoint, timeout=2.0))
    except OSError:
        return False


def _kld_summary(out: str) -> dict[str, float]:
    def number(label: str) -> float:
        found = re.search(rf"^{label}:\s+(-?[0-9.]+)", out, re.MULTILINE)
        if found is None:
            raise RuntimeError(f"no {label!r} in llama-perplexity's output:\n{out[-2000:]}")
        return float(found.group(1))

    return {
        "kl_mean": number("Mean    KLD"),
        "kl_max": number("Maximum KLD"),
        "top1_agree": number("Same top p") / 100,
    }


def generate(d: Daemon, prompt: str, tokens: int) -> dict[str, Any]:
    """Greedy on the CPU (num_gpu 0), raw: the same request as benchmarks/rpc.py's."""
    return rpc_benchmark.generate(d, 0, tokens, prompt, raw=True)


def cost(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Prompt and decode tok/s of a local load with repacking on and off."""
    text = prose()
    daemons: dict[str, Daemon] = {}
    rates: dict[str, dict[str, list[float]]] = {}
    with ExitStack() as stack:
        for i, repack in enumerate(("true", "false")):
            env = {"LOCALSERVE_CPU_REPACK": repack, "LOCALSERVE_NUM_PARALLEL": "1"}
            d = start_daemon(WORK / f"home-{i}", args.model, env=env)
            stack.callback(stop_daemon, d, check=False)
            generate(d, "Hello", 4)  # load, and warm up
            daemons[f"repack {'on' if repack == 'true' else 'off'}"] = d
            rates[f"repack {'on' if repack == 'true' else 'off'}"] = {"prompt": [], "decode": []}
        for rep in range(args.reps):
            # About 512 tokens of prose, another stretch each round: nothing cached.
            start = 5000 * (rep + 1)
            prompt = text[start : start + 2200]
            order = list(daemons) if rep % 2 == 0 else list(reversed(daemons))
            for name in order:
                done = generate(daemons[name], prompt, 64)
                rates[name]["prompt"].append(
                    done["prompt_eval_count"] / done["prompt_eval_duration"] * 1e9
                )
                rates[name]["decode"].append(done["eval_count"] / done["eval_duration"] * 1e9)
            print(f"cost: round {rep + 1}/{args.reps} done", file=sys.stderr)
    return {
        name: {
            "prompt_tok_s": statistics.median(r["prompt"]),
            "decode_tok_s": statistics.median(r["decode"]),
            "prompt_runs": r["prompt"],
            "decode_runs": r["decode"],
        }
        for name, r in rates.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--greedy", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="threads per load and worker")
    parser.add_argument("--reps", type=int, default=3, help="rounds of the cost part; 0 skips it")
    parser.add_argument(
        "--llama-bin", type=Path, default=None, help="llama-perplexity and ggml-rpc-server here"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.model is None:
        from tests.support.tiny_gguf import gemma_path

        args.model = gemma_path()
    WORK.mkdir(parents=True, exist_ok=True)

    table, n_tokens = numbers(args)
    print(
        f"model {args.model.name}, {n_tokens} tokens teacher-forced, {args.greedy} greedy, "
        f"{args.threads} thread(s) per load and worker"
    )
    print(
        f"{'against':<17} {'setup':<22} {'KL mean':>9} {'KL max':>9} {'dlogp max':>9} "
        f"{'top1':>6} {'greedy':>9}"
    )
    for row in table:
        where = row["greedy_diverges_at"]
        greedy = "same" if where is None else f"differs@{where}"
        kl_mean = "identical" if row["identical"] else f"{row['kl_mean']:.2e}"
        print(
            f"{row['reference']:<17} {row['setup']:<22} {kl_mean:>9} {row['kl_max']:>9.2e} "
            f"{row['logprob_diff_max']:>9.4f} {row['top1_agree']:>6.1%} {greedy:>9}"
        )
    own = llama_cpp_split(args) if args.llama_bin else []
    if own:
        print("llama.cpp's own split (llama-perplexity --kl-divergence, ggml-rpc-server):")
        print(f"{'against':<17} {'setup':<22} {'KL mean':>9} {'KL max':>9} {'top1':>6}")
    for row in own:
        print(
            f"{row['reference']:<17} {row['setup']:<22} {row['kl_mean']:>9.2e} "
            f"{row['kl_max']:>9.2e} {row['top1_agree']:>6.1%}"
        )
    speeds = cost(args) if args.reps else {}
    for name, speed in speeds.items():
        print(
            f"{name}: prompt {speed['prompt_tok_s']:.1f} tok/s, "
            f"decode {speed['decode_tok_s']:.1f} tok/s (local load, daemon)"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": {
                        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                    },
                    "numbers": table,
                    "llama_cpp": own,
                    "cost": speeds,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
