"""An agent session replayed: localserve against llama-server, side by side, one run.

    python benchmarks/agent_session.py [--model PATH] [--turns 10] [--system-tokens 8000]
        [--models gemma gemma-swa-full] [--headers stable changing] [--reuse 256]
        [--kl-turns 2 6 10] [--skip kv sessions kl] [--json FILE]

A coding agent's requests (issue 28): a ~8k-token system prompt with ~20 tool
definitions and, near its top, a one-line header (a request id and a time) that is
either stable or changes with every request; then 10 turns, each adding a tool call,
its result and a user line. Each turn is one streamed request (greedy, 8 new tokens,
raw text: the same text to every server); time to first token is measured on the
client, per turn and in total.

Servers (the same GGUF, the same llama.cpp: llama-server is built from the pinned
llama-cpp-python's vendor/llama.cpp by peers.py; 2 threads, 4 slots, 16k context per
slot, one unified KV cache):

- ``localserve``: the daemon over HTTP (/v1/completions), cache reuse off;
- ``localserve+reuse``: the same with LOCALSERVE_CACHE_REUSE (``--reuse``, 256);
- ``llama-server``: ``-np 4 -kvu``, its prompt cache and context checkpoints on;
- ``llama-server+reuse``: the same with ``--cache-reuse 256``.

Models (``--models``): ``gemma`` (Gemma 3 270M Q4_K_M as localserve now loads it: its
15 sliding-window layers at their window, llama.cpp's iSWA cache) and
``gemma-swa-full`` (the same with every layer's cache as long as the context:
LOCALSERVE_SWA_FULL=true, llama-server ``--swa-full``; what localserve did before, and
a model whose cells can all be moved).

Parts: ``kv``: KV bytes per context token, localserve's plan against llama-server's
logged buffers; ``sessions``: the sessions, each header kind for each model and
server; ``kl``: the cost of cache reuse, the KL divergence of the next-token
distribution (the whole vocabulary) of a reused read from a cold one, at the turns
``--kl-turns`` of a session whose header changes (each model, in process).

Goals (issue 28): header stable, every turn after the first at most 0.1x the first
(cold) one; header changing with reuse on, total TTFT at most 0.5x llama-server's best.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.peers import binary, free_port, stop, wait_http  # noqa: E402
from benchmarks.prompts import Tokenizer  # noqa: E402

THREADS = 2
SLOTS = 4
CTX = 16384  # per slot
NEW_TOKENS = 8
PARTS = ("kv", "sessions", "kl")
SERVERS = ("localserve", "localserve+reuse", "llama-server", "llama-server+reuse")
MODELS = ("gemma", "gemma-swa-full")

TOOLS = [
    ("read_file", "Read a file of the workspace and return its text, with line numbers."),
    ("write_file", "Write text to a file of the workspace, creating folders as needed."),
    ("edit_file", "Replace one exact span of a file by another; fails when it is not unique."),
    ("list_dir", "List the entries of a folder, with their sizes and kinds."),
    ("search_code", "Search the workspace for a regular expression; return matching lines."),
    ("find_files", "Find files whose path matches a glob pattern."),
    ("run_shell", "Run a shell command in the workspace and return its output and status."),
    ("run_tests", "Run the test suite, or the tests matching an expression."),
    ("git_status", "Show the working tree's status: changed, added and untracked files."),
    ("git_diff", "Show the diff of the working tree, or of one file, against HEAD."),
    ("git_commit", "Commit the staged changes with a message."),
    ("git_log", "Show the latest commits, with their messages and changed files."),
    ("web_fetch", "Fetch a web page and return its text without markup."),
    ("web_search", "Search the web; return titles, addresses and snippets."),
    ("python_eval", "Evaluate a Python expression in a sandbox and return its value."),
    ("todo_write", "Replace the task list with the given items and their states."),
    ("ask_user", "Ask the user a question and wait for the answer."),
    ("open_issue", "Open an issue in the project's tracker, with a title and a body."),
    ("lint", "Run the linters on the given files and return what they report."),
    ("format_code", "Format the given files with the project's formatter."),
]


def tool_block(name: str, summary: str, index: int) -> str:
    params = {
        "type": "object",
        "properties": {
            "path": {"type": "string", "description": f"Where {name} acts, relative to the root."},
            "pattern": {"type": "string", "description": "A pattern or the text to use."},
            "limit": {"type": "integer", "description": "At most this many results (1-500)."},
            "options": {
                "type": "object",
                "description": "Flags: recursive, case_sensitive, include_hidden, dry_run.",
            },
        },
        "required": ["path"] if index % 2 else ["path", "pattern"],
    }
    notes = (
        f"Use {name} when the task needs it; prefer it to a shell command that does the "
        "same. Arguments are checked against the schema before the call; a failing call "
        "returns an error object with a message and the arguments it received. "
    ) * 2
    return (
        f"## {name}\n{summary}\n{notes}\nParameters: {json.dumps(params)}\n"
        f'Example: {{"name": "{name}", "arguments": {{"path": "src/module_{index}.py"}}}}\n\n'
    )


RULES = (
    "Rule {i}: read the files you change before changing them; keep changes small and "
    "tested; say what you did and what you did not; never invent a file's contents; "
    "when a command fails, read its output before trying again; keep the user informed "
    "of anything that takes long or touches many files.\n"
)


def system_prompt(tokenizer: Tokenizer, target: int, header: str) -> str:
    """~``target`` tokens: a first line, the header, the tools, then rules to size."""
    head = f"You are a coding agent working in a software project.\n{header}\n\n# Tools\n\n"
    tools = "".join(tool_block(name, summary, i) for i, (name, summary) in enumerate(TOOLS))
    text = head + tools + "# Rules\n\n"
    i = 0
    while tokenizer.count(text) < target:
        text += RULES.format(i=i)
        i += 1
    return (
        text + "\n# Conversation\n\nUser: The tests of the parser fail; find out why and fix it.\n"
    )


def turn_text(turn: int) -> str:
    """What one turn adds: the call the assistant made, its result, the user's line."""
    name = TOOLS[(turn * 7) % len(TOOLS)][0]
    call = json.dumps({"name": name, "arguments": {"path": f"src/parser_{turn}.py", "limit": 40}})
    lines = "\n".join(
        f"{n:>4}  value_{turn}_{n} = parse(tokens[{n}:], depth={n % 5})" for n in range(12)
    )
    result = f'{{"ok": true, "output": "{lines}"}}'
    return (
        f"Assistant: <tool_call>{call}</tool_call>\n"
        f"Tool ({name}): {result}\n"
        f"User: Good. Now look at the next part (step {turn}).\n"
    )


def header_line(kind: str, request: int) -> str:
    if kind == "stable":
        return "Session: 7f3a-92c1, started 2026-12-08T10:00:00Z."
    return f"Request: {0x5A3F00 + request * 7919:x}, sent 2026-12-08T10:{request:02d}:{(request * 37) % 60:02d}Z."


def session_prompts(system: dict[int, str], turns: int) -> list[str]:
    """The prompt of each turn: ``system[t]`` (its header for that request), the turns
    so far, and the assistant's cue."""
    return [
        system[t] + "".join(turn_text(k) for k in range(t)) + "Assistant:" for t in range(turns)
    ]


# ---------------------------------------------------------------- the servers


@dataclass
class Result:
    ttft: list[float] = field(default_factory=list)
    cached: list[int] = field(default_factory=list)  # prompt tokens the server did not read
    prompt: list[int] = field(default_factory=list)


class Localserve:
    def __init__(self, model: Path, reuse: int, swa_full: bool) -> None:
        self.model, self.reuse, self.swa_full = model, reuse, swa_full

    def start(self) -> None:
        self.home = tempfile.mkdtemp(prefix="localserve-agent-")
        port = free_port()
        env = {**os.environ, "LOCALSERVE_HOME": self.home, "LOCALSERVE_HOST": f"127.0.0.1:{port}",
               "LOCALSERVE_NUM_PARALLEL": str(SLOTS), "LOCALSERVE_CONTEXT_LENGTH": str(CTX),
               "LOCALSERVE_CACHE_REUSE": str(self.reuse),
               "LOCALSERVE_SWA_FULL": "true" if self.swa_full else "false"}  # fmt: skip
        subprocess.run([sys.executable, "-m", "localserve", "import", str(self.model), "m"],
                       env=env, check=True, capture_output=True)  # fmt: skip
        self.process = subprocess.Popen(
            [sys.executable, "-m", "localserve", "serve", "--foreground"],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{port}"
        wait_http(self.url + "/", process=self.process)
        self.client = httpx.Client(timeout=3600)
        # Load first (not timed): the first turn is then a cold read, not a load. (Load
        # options as /v1/completions sends them: threads = physical cores, 2 here.)
        body = {"model": "m", "prompt": ""}
        self.client.post(self.url + "/api/generate", json=body).raise_for_status()

    def ask(self, text: str) -> tuple[float, int, int]:
        """(time to first token, cached prompt tokens, prompt tokens)."""
        body = {"model": "m", "prompt": text, "max_tokens": NEW_TOKENS, "temperature": 0,
                "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
        t0 = time.perf_counter()
        first = 0.0
        usage: dict[str, Any] = {}
        with self.client.stream("POST", self.url + "/v1/completions", json=body) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if event.get("choices") and event["choices"][0].get("text") and not first:
                    first = time.perf_counter()
                if event.get("usage"):
                    usage = event["usage"]
        cached = usage["prompt_tokens_details"]["cached_tokens"]
        return (first or time.perf_counter()) - t0, cached, usage["prompt_tokens"]

    def close(self) -> None:
        self.client.close()
        stop(self.process)
        shutil.rmtree(self.home, ignore_errors=True)


class LlamaServer:
    def __init__(self, model: Path, reuse: int, swa_full: bool, *, verbose: bool = False) -> None:
        self.model, self.reuse, self.swa_full = model, reuse, swa_full
        self.log = Path(tempfile.mkdtemp(prefix="llama-server-agent-")) / "log.txt"
        self.verbose = verbose  # log llama.cpp's own lines too (its KV buffers)

    def start(self) -> None:
        port = free_port()
        extra = (["--cache-reuse", str(self.reuse)] if self.reuse else []) + (
            ["--swa-full"] if self.swa_full else []
        )
        extra += ["-lv", "4"] if self.verbose else []
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [str(binary("llama-server")), "-m", str(self.model), "--host", "127.0.0.1",
                 "--port", str(port), "-np", str(SLOTS), "-c", str(CTX * SLOTS), "-kvu",
                 "-t", str(THREADS), "-tb", str(THREADS), "--no-webui", *extra],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.url = f"http://127.0.0.1:{port}"
        wait_http(self.url + "/health", process=self.process)
        self.client = httpx.Client(timeout=3600, limits=httpx.Limits(max_keepalive_connections=0))

    def kv_mib(self) -> float:
        text = self.log.read_text(errors="replace")
        return sum(float(x) for x in re.findall(r"KV buffer size =\s+([\d.]+) MiB", text))

    def ask(self, text: str) -> tuple[float, int, int]:
        body = {"prompt": text, "n_predict": NEW_TOKENS, "temperature": 0, "stream": True,
                "cache_prompt": True}  # fmt: skip
        t0 = time.perf_counter()
        first = 0.0
        timings: dict[str, Any] = {}
        with self.client.stream("POST", self.url + "/completion", json=body) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                event = json.loads(line[6:])
                if event.get("content") and not first:
                    first = time.perf_counter()
                if event.get("stop"):
                    timings = event["timings"]
        cached = int(timings.get("cache_n", 0))
        return (first or time.perf_counter()) - t0, cached, cached + int(timings["prompt_n"])

    def close(self) -> None:
        self.client.close()
        stop(self.process)
        shutil.rmtree(self.log.parent, ignore_errors=True)


def make(server: str, model: Path, swa_full: bool, reuse: int) -> Localserve | LlamaServer:
    cls = Localserve if server.startswith("localserve") else LlamaServer
    return cls(model, reuse if server.endswith("+reuse") else 0, swa_full)


# ------------------------------------------------------------------- the parts


def kv_part(model: Path) -> dict[str, Any]:
    """KV bytes per context token: localserve's plan (= llama.cpp's buffers, tested)
    for both cache kinds at this run's context, and llama-server's logged buffers."""
    from localserve.plan import Devices, plan
    from localserve.store.gguf import read_gguf

    info = read_gguf(model)
    cells = CTX * SLOTS
    rows: dict[str, Any] = {}
    print(f"\nKV cache, {SLOTS} x {CTX} = {cells} context cells (f16)")
    print(f"{'':<28} {'localserve plan':>16} {'llama-server':>13} {'bytes / context token':>22}")
    for label, swa_full in (("window cache (now)", False), ("swa_full (before)", True)):
        planned = plan(info, num_ctx=CTX, num_parallel=SLOTS, devices=Devices.cpu_only(64 << 30),
                       swa_full=swa_full)  # fmt: skip
        server = LlamaServer(model, 0, swa_full, verbose=True)
        server.start()
        try:
            peer = server.kv_mib()
        finally:
            server.close()
        ours = planned.kv_bytes / (1 << 20)
        rows[label] = {"plan_mib": ours, "llama_server_mib": peer, "per_token": planned.kv_bytes / cells,
                       "llama_server_per_token": peer * (1 << 20) / cells}  # fmt: skip
        print(f"{label:<28} {ours:>12.1f} MiB {peer:>9.1f} MiB {planned.kv_bytes / cells:>12.0f}"
              f" / {peer * (1 << 20) / cells:.0f}")  # fmt: skip
    return rows


def sessions_part(
    model: Path, tokenizer: Tokenizer, args: argparse.Namespace
) -> dict[str, dict[str, dict[str, Any]]]:
    systems = {kind: {t: system_prompt(tokenizer, args.system_tokens, header_line(kind, t))
                      for t in range(args.turns)} for kind in args.headers}  # fmt: skip
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for model_kind in args.models:
        swa_full = model_kind == "gemma-swa-full"
        for kind in args.headers:
            prompts = session_prompts(systems[kind], args.turns)
            key = f"{model_kind}, header {kind}"
            results[key] = {}
            print(f"\n{key}: {args.turns} turns, prompts {tokenizer.count(prompts[0])}"
                  f" to {tokenizer.count(prompts[-1])} tokens; TTFT per turn (s), cached tokens")  # fmt: skip
            for name in args.servers:
                server = make(name, model, swa_full, args.reuse)
                server.start()
                result = Result()
                try:
                    for text in prompts:
                        ttft, cached, total = server.ask(text)
                        result.ttft.append(ttft)
                        result.cached.append(cached)
                        result.prompt.append(total)
                finally:
                    server.close()
                later = max(result.ttft[1:]) / result.ttft[0] if len(result.ttft) > 1 else None
                results[key][name] = {"ttft": result.ttft, "cached": result.cached,
                                      "prompt": result.prompt, "total": sum(result.ttft),
                                      "worst_later_over_first": later}  # fmt: skip
                turns = " ".join(f"{t:.2f}" for t in result.ttft)
                print(f"  {name:<20} total {sum(result.ttft):7.2f}  [{turns}]")
                print(f"  {'':<20} cached {result.cached}")
            report_goals(key, kind, results[key])
    return results


def report_goals(key: str, kind: str, rows: dict[str, dict[str, Any]]) -> None:
    peers = [rows[n]["total"] for n in rows if n.startswith("llama-server")]
    for name in (n for n in rows if n.startswith("localserve")):
        row = rows[name]
        if kind == "stable" and row["worst_later_over_first"] is not None:
            ok = row["worst_later_over_first"] <= 0.1
            print(f"  goal, {name}: turns 2+ at most 0.1x turn 1: worst "
                  f"{row['worst_later_over_first']:.3f}x -> {'met' if ok else 'NOT met'}")  # fmt: skip
        if peers:
            best = min(peers)
            row["over_llama_server_best"] = row["total"] / best
            line = f"  {name}: total {row['total']:.2f} s = {row['total'] / best:.2f}x llama-server's best ({best:.2f} s)"
            if kind == "changing" and name.endswith("+reuse"):
                line += f" -> goal (<= 0.5x) {'met' if row['total'] / best <= 0.5 else 'NOT met'}"
            print(line)


def kl_part(
    model: Path, tokenizer: Tokenizer, args: argparse.Namespace, swa_full: bool
) -> dict[int, dict[str, float]]:
    """In process: each turn of a session whose header changes, read with cache reuse
    after the turn before, against a cold read: KL(cold || reused) of the next-token
    distribution over the whole vocabulary, and whether the likeliest token is the
    same."""
    import numpy as np

    from localserve.engine.engine import Engine
    from localserve.engine.job import Job
    from localserve.engine.llama import Model
    from localserve.runtime.options import LoadOptions, SamplingOptions

    systems = {t: system_prompt(tokenizer, args.system_tokens, header_line("changing", t))
               for t in range(args.turns)}  # fmt: skip
    prompts = session_prompts(systems, args.turns)
    llama = Model([model], n_gpu_layers=0)
    options = SamplingOptions(temperature=0.0, num_predict=1)

    def read(engine: Engine, text: str) -> tuple[np.ndarray, int]:
        job = Job(f"t{time.monotonic_ns()}", llama.tokenize(text, add_special=True), options)
        job.logprobs = 0
        seen: list[np.ndarray] = []
        sample = engine._on_token

        def spy(job: Job, token: int, events: list[Any], row: int) -> None:
            if not seen:
                logits = engine.context.logits(row).astype(np.float64)
                seen.append(logits - np.logaddexp.reduce(logits))
            sample(job, token, events, row)

        engine._on_token = spy  # type: ignore[method-assign]
        engine.submit(job)
        cached = 0
        while engine.has_work():
            for event in engine.step():
                cached = getattr(event, "prompt_cached", cached)
        engine._on_token = sample  # type: ignore[method-assign]
        return seen[0], cached

    def load(reuse: int) -> Engine:
        return Engine(llama, LoadOptions(num_ctx=CTX, num_parallel=SLOTS, swa_full=swa_full,
                                         cache_reuse=reuse), n_threads=THREADS)  # fmt: skip

    results: dict[int, dict[str, float]] = {}
    kind = "gemma-swa-full" if swa_full else "gemma"
    print(f"\ncache reuse's cost, {kind}: KL(cold || reused) of the next token, reuse {args.reuse}")
    warm = load(args.reuse)
    try:
        for t in range(max(args.kl_turns)):
            reused, cached = read(warm, prompts[t])
            if t + 1 not in args.kl_turns:
                continue
            cold_engine = load(0)
            try:
                cold, _ = read(cold_engine, prompts[t])
            finally:
                cold_engine.close()
            kl = float(np.sum(np.exp(cold) * (cold - reused)))
            same = int(np.argmax(cold)) == int(np.argmax(reused))
            top = float(np.max(np.abs(np.exp(cold) - np.exp(reused))))
            results[t + 1] = {"kl": kl, "same_top": same, "max_prob_diff": top, "cached": cached}
            print(f"  turn {t + 1:>2}: cached {cached} tokens, KL {kl:.4f} nats, likeliest token"
                  f" {'the same' if same else 'DIFFERENT'}, largest probability change {top:.4f}")  # fmt: skip
    finally:
        warm.close()
        llama.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="a GGUF (default: Gemma 3 270M)")
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--system-tokens", type=int, default=8000)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument(
        "--headers", nargs="+", default=["stable", "changing"], choices=("stable", "changing")
    )
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=SERVERS)
    parser.add_argument("--reuse", type=int, default=256, help="cache reuse's shortest run")
    parser.add_argument("--kl-turns", type=int, nargs="+", default=[2, 6, 10])
    parser.add_argument("--skip", nargs="*", default=[], choices=PARTS)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.model is None:
        from tests.support.tiny_gguf import gemma_path

        args.model = gemma_path()
    tokenizer = Tokenizer(args.model)
    print(f"model {args.model.name}, {THREADS} threads, {SLOTS} slots x {CTX} context, "
          f"{NEW_TOKENS} new tokens a turn, system prompt ~{args.system_tokens} tokens")  # fmt: skip
    out: dict[str, Any] = {"model": args.model.name, "turns": args.turns}
    if "kv" not in args.skip:
        out["kv"] = kv_part(args.model)
    if "sessions" not in args.skip:
        out["sessions"] = sessions_part(args.model, tokenizer, args)
    if "kl" not in args.skip:
        out["kl"] = {
            kind: kl_part(args.model, tokenizer, args, kind == "gemma-swa-full")
            for kind in args.models
        }
    tokenizer.close()
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
