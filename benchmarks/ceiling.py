"""The engine ceiling: llama.cpp's own llama-batched-bench on the same model and sizes.

It decodes N sequences together with no server, no sampling and no tokenizer round
trips, so its text-generation rate (S_TG) is what the llama.cpp build can do at best;
a server's aggregate rate over it says how close the server gets.
"""

from __future__ import annotations

import json
import statistics
import subprocess
from pathlib import Path
from typing import Any

from benchmarks.peers import binary


def batched_bench(
    model: Path,
    *,
    prompt_tokens: int,
    new_tokens: int,
    levels: list[int],
    ctx: int,
    threads: int,
    reps: int,
) -> dict[int, dict[str, Any]]:
    """``reps`` llama-batched-bench runs (unified KV cache of ``ctx`` cells, like
    llama-server's -kvu); per parallel level, the median of each rate: S_PP
    (``speed_pp``), S_TG (``speed_tg``), and ``output_tok_s``, the new tokens over the
    whole time including the prompts (what a server's aggregate rate measures)."""
    runs = [_run(model, prompt_tokens, new_tokens, levels, ctx, threads) for _ in range(reps)]
    return {
        n: {
            "pp": prompt_tokens,
            "tg": new_tokens,
            **{
                key: statistics.median(run[n][key] for run in runs)
                for key in ("speed_pp", "speed_tg", "output_tok_s")
            },
        }
        for n in levels
    }


def _run(
    model: Path, prompt_tokens: int, new_tokens: int, levels: list[int], ctx: int, threads: int
) -> dict[int, dict[str, Any]]:
    """One run: its JSON line per level. The first level runs twice and its first
    result is dropped: a warm-up, as every server gets one."""
    command = [str(binary("llama-batched-bench")), "-m", str(model), "-c", str(ctx), "-kvu",
               "-t", str(threads), "-tb", str(threads), "-npp", str(prompt_tokens),
               "-ntg", str(new_tokens), "-npl", ",".join(map(str, [levels[0], *levels])), "--output-format", "jsonl"]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"llama-batched-bench failed ({out.returncode}):\n{out.stderr[-2000:]}")
    rows = {}
    for line in out.stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            row["output_tok_s"] = row["pl"] * row["tg"] / row["t"]
            rows[row["pl"]] = row  # a later line for the same level replaces the warm-up
    missing = set(levels) - set(rows)
    if missing:
        raise RuntimeError(
            f"llama-batched-bench gave no result for {sorted(missing)}:\n{out.stdout}"
        )
    return rows
