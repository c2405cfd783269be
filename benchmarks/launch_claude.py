"""Claude Code started by `localserve launch claude` against Claude Code started by hand,
on the same daemon setup: does what launch sets keep the prompt prefix cached?

    python benchmarks/launch_claude.py [--model PATH] [--json FILE]

Each way gets a fresh daemon (benchmarks/claude_code.py's: Gemma 3 270M with Qwen 3's
template, greedy, one line, the default context, loaded before the first task) and runs
the same two tasks in one project (tests/support/claude_code.py): the first reads the
system prompt and tools cold (~19.5k tokens), the second is where a stable prefix pays.
By hand is the environment the Claude Code test sets (base URL, token, model tiers,
no nonessential traffic); launch adds what cli/agents.py sets (no attribution header,
no prompt suggestions or away summaries, the sub-agent model).

Per task, from the daemon's own counts (/metrics, before and after): prompt tokens,
those read from the prefix cache, requests, and the mean time to first token
(localserve_time_to_first_token_seconds); and Claude Code's own cache_read_input_tokens.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from functools import partial
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.claude_code import MODEL, TASKS, model_to_run, with_localserve  # noqa: E402
from tests.support.claude_code import claude as run_claude  # noqa: E402

COUNTS = {
    "prompt_tokens": "localserve_prompt_tokens_total",
    "cached_tokens": "localserve_prefix_cache_tokens_total",
    "ttft_sum": "localserve_time_to_first_token_seconds_sum",
    "requests": "localserve_time_to_first_token_seconds_count",
}


def counts(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=30).text
    found = {}
    for key, metric in COUNTS.items():
        match = re.search(rf"^{metric} (\S+)$", text, re.MULTILINE)
        found[key] = float(match[1]) if match else 0.0
    return found


def tasks(url: str, home: Path, *, launched: bool) -> list[dict[str, Any]]:
    # with_localserve keeps the store next to the agent's HOME (HOME/../store).
    launch_env = (
        {
            "LOCALSERVE_HOST": url.removeprefix("http://"),
            "LOCALSERVE_HOME": str(home.parent / "store"),
        }
        if launched
        else None
    )
    rows = []
    for prompt in TASKS:
        before = counts(url)
        result = run_claude(url, home, prompt, model=MODEL, timeout=3600, launch_env=launch_env)
        after = counts(url)
        delta = {key: after[key] - before[key] for key in COUNTS}
        requests = int(delta["requests"])
        rows.append(
            {
                "is_error": result.get("is_error"),
                "requests": requests,
                "prompt_tokens": int(delta["prompt_tokens"]),
                "cached_tokens": int(delta["cached_tokens"]),
                "ttft_s": round(delta["ttft_sum"] / requests, 2) if requests else None,
                "claude_cache_read": (result.get("usage") or {}).get("cache_read_input_tokens"),
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model = model_to_run(args.model)
    if model is None:
        return 2
    report = {}
    for way, launched in (("by hand", False), ("launch", True)):
        rows = with_localserve(model, partial(tasks, launched=launched))
        report[way] = rows
        for task, row in zip(TASKS, rows, strict=True):
            print(f"{way:8} {task!r:26} {json.dumps(row)}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
