"""The bytes every JSON route sends, pinned: one in-process app over a scripted runner
whose events cover every kind the routes shape (log-probabilities, thinking, text with
line breaks JSON leaves raw, tool calls, speculation counts, ``context``, ``n`` answers,
prompt log-probabilities), and the answers compared with tests/unit/golden/wire.txt.

Only what changes from run to run is masked (times, durations, ids, temp paths); key
order, nulls, absent keys, number formats and escapes are compared byte for byte.
``LOCALSERVE_UPDATE_GOLDEN=1`` rewrites the file: a diff of it is a wire change to review.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from localserve.config import load_settings
from localserve.runtime.options import LoadOptions
from localserve.runtime.protocol import (
    DeviceShare,
    DoneEvent,
    EmbedResult,
    Event,
    GenerateJob,
    LoadRequest,
    LogprobsEvent,
    ProgressEvent,
    TextEvent,
    ThinkingEvent,
    ToolCallEvent,
)
from localserve.server.app import create_app
from localserve.store.importing import import_gguf
from localserve.store.store import ModelStore
from tests.support import chat_templates
from tests.support.fake_runner import ID, FakeFactory, FakeRunner
from tests.support.tiny_gguf import write_tiny_gguf

GOLDEN = Path(__file__).parent / "golden" / "wire.txt"
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "get_time"}},
]
ASK = [{"role": "user", "content": "Weather?"}]
RESPONSE_TOOLS = [
    {"type": "function", "name": "get_weather", "parameters": {"type": "object"}},
    {"type": "function", "name": "get_time"},
]
# The same tools in Anthropic's form.
MESSAGES_TOOLS = [
    {"name": "get_weather", "input_schema": {"type": "object"}},
    {"name": "get_time", "description": "Now.", "input_schema": {"type": "object"}},
]


def _entry(token: str, logprob: float | None, top: int) -> dict[str, Any]:
    alternatives = [
        {"token": f"{token}{i}", "logprob": -1.5 * (i + 1), "bytes": list(f"{token}{i}".encode())}
        for i in range(top)
    ]
    return {
        "token": token,
        "logprob": logprob,
        "bytes": list(token.encode()),
        "top_logprobs": alternatives,
    }


class ScriptedRunner(FakeRunner):
    """Every event kind, per answer: answer 0 drafts and stops, answer 1 runs to length."""

    def __init__(self, paths: Sequence[Path], options: LoadOptions) -> None:
        super().__init__(paths, options)
        self.info = replace(
            self.info,
            num_ctx=4096,
            size=123_456_789,
            size_vram=23_456_789,
            devices=(
                DeviceShare("CPU", "the host", 2, 100),
                DeviceShare("RPC0", "10.0.0.2:50052", 3, 200),
            ),
        )

    def events_for(self, job: GenerateJob) -> list[Event]:
        steps: list[Event] = []
        if job.progress:  # the runner took the job: 7 prompt tokens, 5 of them cached
            steps.append(ProgressEvent(ID, total=7, cache=5, processed=0, time_ms=0))
        if job.prompt_logprobs:
            first, second = _entry("Say", None, 0), _entry(" hi", -2.75, job.top_logprobs)
            steps.append(LogprobsEvent(ID, [first, second], prompt=True))
        if job.logprobs:
            steps.append(LogprobsEvent(ID, [_entry("Hi", -0.25, job.top_logprobs)]))
        steps += [ThinkingEvent(ID, "hmm\n"), TextEvent(ID, "Hi")]
        if job.logprobs:
            steps.append(LogprobsEvent(ID, [_entry(" th\u2028ere", -1e-05, job.top_logprobs)]))
        steps.append(TextEvent(ID, ' th\u2028ere \u00e9\x85\u2029 \U0001f600 "q" \\'))
        if job.tools:
            steps.append(ToolCallEvent(ID, 0, "get_weather", {"city": "Paris", "n": 1.0}))
            steps.append(ToolCallEvent(ID, 1, "get_time", {}, call_id="abc123"))
        return steps

    async def generate(self, job: GenerateJob) -> AsyncIterator[Event]:
        self.requests.append(job)
        for step in self.events_for(job):
            for choice in range(job.n):
                yield replace(step, choice=choice)
        for choice in range(job.n):
            yield DoneEvent(
                ID,
                "stop" if choice == 0 else "length",
                prompt_eval_count=7,
                prompt_cached=5,
                prompt_eval_duration=1000,
                eval_count=3 + choice,
                eval_duration=2000,
                context=[1, 2, 3] if job.want_context else None,
                draft_count=4 if choice == 0 else 0,
                draft_accepted=3 if choice == 0 else 0,
                choice=choice,
            )

    async def embed(self, inputs: list[str], *, truncate: bool) -> EmbedResult:
        vectors = [[0.5, -0.25, 1e-05, 3.0 + i] for i, _ in enumerate(inputs)]
        return EmbedResult(ID, vectors, prompt_eval_count=5, prompt_eval_duration=0)


class ScriptedFactory(FakeFactory):
    async def __call__(self, load: LoadRequest) -> FakeRunner:
        self.loads.append(load)
        runner = ScriptedRunner(load.paths, load.options)
        self.runners.append(runner)
        return runner


Case = tuple[str, str, dict[str, Any] | None]
CASES: list[Case] = [
    ("GET", "/api/version", None),
    ("GET", "/api/tags", None),
    ("POST", "/api/show", {"model": "tools"}),
    ("POST", "/api/generate", {"model": "tools", "prompt": ""}),
    ("GET", "/api/ps", None),
    ("POST", "/api/generate", {"model": "tools", "prompt": "", "keep_alive": 0}),
    ("POST", "/api/generate", {"model": "tools", "prompt": "hi", "think": True}),
    ("POST", "/api/generate", {"model": "tools", "prompt": "hi", "think": True, "stream": False}),
    ("POST", "/api/generate", {"model": "tools", "prompt": "hi", "top_logprobs": 2}),
    (
        "POST",
        "/api/generate",
        {"model": "tools", "prompt": "hi", "logprobs": True, "stream": False},
    ),
    ("POST", "/api/chat", {"model": "tools", "messages": []}),
    ("POST", "/api/chat", {"model": "tools", "messages": ASK, "tools": TOOLS}),
    ("POST", "/api/chat", {"model": "tools", "messages": ASK, "tools": TOOLS, "stream": False}),
    ("POST", "/api/chat", {"model": "tools", "messages": ASK, "logprobs": True}),
    (
        "POST",
        "/api/chat",
        {"model": "tools", "messages": ASK, "top_logprobs": 1, "stream": False},
    ),
    ("POST", "/api/embed", {"model": "tools", "input": ["a", "b"]}),
    ("POST", "/api/embed", {"model": "tools", "input": "a", "dimensions": 2}),
    ("POST", "/api/embed", {"model": "tools", "input": ""}),
    ("POST", "/api/embeddings", {"model": "tools", "prompt": "a"}),
    ("POST", "/api/embeddings", {"model": "tools", "prompt": ""}),
    ("POST", "/api/create", {"model": "made", "from": "tools", "system": "Be brief."}),
    ("POST", "/api/create", {"model": "made2", "from": "tools", "stream": False}),
    ("POST", "/api/show", {"model": "made"}),
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/tools", None),
    ("POST", "/v1/chat/completions", {"model": "tools", "messages": ASK}),
    ("POST", "/v1/chat/completions", {"model": "tools", "messages": ASK, "tools": TOOLS}),
    (
        "POST",
        "/v1/chat/completions",
        {"model": "tools", "messages": ASK, "n": 2, "logprobs": True, "top_logprobs": 1},
    ),
    (
        "POST",
        "/v1/chat/completions",
        {"model": "tools", "messages": ASK, "tools": TOOLS, "stream": True},
    ),
    (
        "POST",
        "/v1/chat/completions",
        {
            "model": "tools",
            "messages": ASK,
            "n": 2,
            "logprobs": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ),
    ("POST", "/v1/completions", {"model": "tools", "prompt": "Say"}),
    (
        "POST",
        "/v1/completions",
        {"model": "tools", "prompt": "Say", "n": 2, "logprobs": 2, "echo": True},
    ),
    ("POST", "/v1/completions", {"model": "tools", "prompt": "Say", "logprobs": 1, "stream": True}),
    (
        "POST",
        "/v1/completions",
        {
            "model": "tools",
            "prompt": ["Say", " it"],
            "echo": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ),
    ("POST", "/v1/embeddings", {"model": "tools", "input": ["a", "b"]}),
    ("POST", "/v1/embeddings", {"model": "tools", "input": "a", "encoding_format": "base64"}),
    ("POST", "/v1/embeddings", {"model": "tools", "input": "a", "dimensions": 2}),
    ("POST", "/v1/responses", {"model": "tools", "input": "Weather?"}),
    (
        "POST",
        "/v1/responses",
        {
            "model": "tools",
            "input": ASK,
            "tools": RESPONSE_TOOLS,
            "include": ["reasoning.encrypted_content"],
        },
    ),
    (
        "POST",
        "/v1/responses",
        {"model": "tools", "input": ASK, "tools": RESPONSE_TOOLS, "stream": True},
    ),
    ("GET", "/v1/responses/resp_nothere", None),
    ("POST", "/v1/messages", {"model": "tools", "max_tokens": 5, "messages": ASK}),
    (
        "POST",
        "/v1/messages",
        {"model": "tools", "max_tokens": 5, "messages": ASK, "tools": MESSAGES_TOOLS},
    ),
    (
        "POST",
        "/v1/messages",
        {
            "model": "tools",
            "max_tokens": 5,
            "messages": ASK,
            "tools": MESSAGES_TOOLS,
            "stream": True,
        },
    ),
    ("POST", "/v1/messages", {"model": "tools", "max_tokens": 5, "messages": ASK, "stream": True}),
    ("POST", "/v1/messages/count_tokens", {"model": "tools", "messages": ASK}),
    ("POST", "/v1/messages", {"model": "nothere", "max_tokens": 5, "messages": ASK}),
    ("POST", "/v1/messages", {"model": "tools", "messages": ASK}),
]

# What differs between runs, masked in the raw text (numbers and strings alike).
VOLATILE = re.compile(
    r'"(created_at|modified_at|expires_at|total_duration|load_duration|created|id|call_id|item_id)":'
    r'("[^"]*"|\d+)'
)


# Raw line separators other than "\n" that JSON allows in strings, shown visibly.
RAW = str.maketrans({"\u2028": "<RAW U+2028>", "\u2029": "<RAW U+2029>", "\x85": "<RAW U+0085>"})


def _mask(text: str, home: str) -> str:
    def keep_fixed(match: re.Match[str]) -> str:
        key, value = match.group(1), match.group(2)
        if key in ("id", "call_id") and value in ('"abc123"', '"tools"'):
            return match.group(0)  # the model's own call id; a model's id is its name
        return f'"{key}":*'

    return VOLATILE.sub(keep_fixed, text.replace(home, "<home>")).translate(RAW)


def answers(tmp_path: Path, home: Path) -> dict[str, str]:
    store = ModelStore(home / "models")
    gguf = write_tiny_gguf(tmp_path / "tools.gguf", chat_template=chat_templates.QWEN3)
    for _ in import_gguf(store, gguf, "tools"):
        pass
    app = create_app(load_settings(), runner_factory=ScriptedFactory())
    found: dict[str, str] = {}

    async def go() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://127.0.0.1"
            ) as client:
                for method, path, body in CASES:
                    response = await client.request(method, path, json=body)
                    # Split at "\n" only: every line reader must see these lines whole.
                    lines = [line for line in response.text.split("\n") if line]
                    kind = response.headers.get("content-type", "")
                    title = f"### {method} {path} {_mask(_compact(body), str(tmp_path))}"
                    text = "\n".join([f"{response.status_code} {kind}", *lines])
                    assert title not in found, title
                    found[title] = _mask(text, str(tmp_path))

    asyncio.run(go())
    return found


def _compact(body: dict[str, Any] | None) -> str:
    return "" if body is None else json.dumps(body, separators=(",", ":"))


def _read_golden() -> dict[str, str]:
    cases: dict[str, str] = {}
    for block in GOLDEN.read_text(encoding="utf-8").split("\n\n"):
        if block.strip():
            title, _, text = block.strip("\n").partition("\n")
            cases[title] = text
    return cases


def test_every_json_route_sends_the_pinned_bytes(tmp_path: Path, isolated_home: Path) -> None:
    found = answers(tmp_path, isolated_home)
    if os.environ.get("LOCALSERVE_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        blocks = [f"{title}\n{text}" for title, text in found.items()]
        GOLDEN.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
        pytest.skip("rewrote the golden file")
    expected = _read_golden()
    assert list(found) == list(expected)
    for title, text in found.items():
        assert text == expected[title], title
