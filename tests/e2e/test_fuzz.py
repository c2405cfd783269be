"""Fuzzing a real daemon: hypothesis-built request bodies for the main routes.

Bodies come in two kinds: near-valid (the route's fields, each either a good value or
junk of another type, plus unknown keys) and garbage (bytes, broken or truncated JSON,
JSON that is not an object, deep nesting, NaN and Infinity as raw tokens). For every
one: no 5xx; a 4xx carries the route's JSON error (OpenAI's shape on /v1); a 200 stream
has no error line; the daemon answers afterwards; the store is untouched; the daemon's
log has no traceback.

Valid bodies must stay cheap: the near-valid strategies only ever give num_predict and
max_tokens values that are small or refused, never null or -1 (which would mean "until
the context is full"). Counts are modest and deadlines off: bounded by count, not time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.schemas import BaseSchema

from tests.support.answers import error_message, untouched
from tests.support.daemon import Daemon, add_model, running_daemon
from tests.support.fakehub import FakeHub
from tests.support.media import png, sound
from tests.support.tiny_gguf import write_tiny_gguf
from tests.support.tiny_projector import write_tiny_audio_projector

FUZZ = settings(
    max_examples=30,
    deadline=None,
    database=None,  # nothing written into the checkout
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,  # `unchanged` checks once per test, on purpose
    ],
)

# ---------------------------------------------------------------- strategies

SCALAR_JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([10**30, -(10**30), 2**63, 2**64, -1, 0]),
    st.floats(),  # NaN and +-Infinity included: json.dumps writes them as raw tokens
    st.text(max_size=20),
    st.sampled_from(["\ud800", "a\udfffb", "\x00", "NaN", "Infinity", "1e999"]),
)
JUNK = st.recursive(
    SCALAR_JUNK,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
HOSTILE_NAMES = st.sampled_from(
    [
        "../../etc/passwd",
        "a\x00b",
        "a" * 5000,
        "file:///etc/passwd",
        "http://169.254.169.254/latest/meta-data",
        "hf.co/../x",
        "tiny:../x",
        "~/x",
        "/abs/path",
        "C:\\x",
        "",
        " ",
        "nothere",
    ]
)
TEXT = st.one_of(
    st.text(max_size=40),
    st.text(max_size=40),
    st.integers(0, 30_000).map(lambda n: "word " * n),  # up to far beyond the 2048-token context
)
SMALL_COUNT = st.integers(0, 4)
# Refused values only: never null, -1 or -2, which mean "no limit".
BAD_COUNT = st.sampled_from([-3, -(10**30), 10**30, 2**63, 1.5, math.nan, math.inf, "x", True, [1]])
KEEP_ALIVE = st.sampled_from(
    ["5m", "1h30m", -1, 300, 0.5, "soon", "", math.nan, math.inf, -math.inf, 1e308, "9" * 30 + "h"]
)


@st.composite
def near_valid(
    draw: st.DrawFn,
    valid: st.SearchStrategy[dict[str, Any]],
    junk_for: dict[str, st.SearchStrategy[Any]] | None = None,
) -> dict[str, Any]:
    """A valid body with up to two fields swapped for junk, and maybe unknown keys.

    ``junk_for`` gives the junk of fields that bound the work (options, max_tokens):
    values that are refused, never ones that lift the bound.
    """
    body = dict(draw(valid))
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from(sorted(body)))
        body[key] = draw((junk_for or {}).get(key, JUNK))
    if draw(st.integers(0, 3)) == 0:
        extra = draw(
            st.dictionaries(st.text(max_size=12).map(lambda k: f"x-{k}"), JUNK, max_size=2)
        )
        body = {**extra, **body}
    return body


def options() -> st.SearchStrategy[dict[str, Any]]:
    """Ollama's options, output capped; near-valid in turn."""
    valid = st.fixed_dictionaries(
        {"num_predict": SMALL_COUNT},
        optional={
            "temperature": st.floats(0, 2),
            "top_k": st.integers(0, 100),
            "top_p": st.floats(0, 1),
            "seed": st.integers(-1, 2**32),
            "num_ctx": st.sampled_from([16, 64, 2048, 1 << 22]),
            "num_batch": st.sampled_from([4, 512]),
            "stop": st.lists(st.text(max_size=5), max_size=3),
            "ignore_eos": st.booleans(),
            "mirostat": st.integers(0, 2),  # accepted and ignored
            "think_budget": st.integers(-1, 64),
        },
    )
    junk_for = {
        "num_predict": BAD_COUNT,
        "num_ctx": st.sampled_from([0, -5, 15, (1 << 22) + 1, 1e9, "2048"]) | JUNK,
        "num_batch": st.sampled_from([0, 1, 3, 1 << 17]) | JUNK,
        "think_budget": st.sampled_from([-2, 1 << 40, "8", 1.5]) | JUNK,
    }
    return near_valid(valid, junk_for)


# Ollama's think: a switch or a level (the tiny model cannot think: a 400 when on).
THINK = st.sampled_from([True, False, "low", "medium", "high"])
REASONING_EFFORT = st.sampled_from(["none", "minimal", "low", "medium", "high", "xhigh"])

# Not null, not an object without num_predict: either would lift the output cap.
BAD_OPTIONS = st.one_of(
    st.sampled_from([[], "fast", 5, True, {"temprature": 1}, {"num_predict": -3}]),
    st.just(None).flatmap(lambda _: options()).map(lambda o: {**o, "num_predict": 10**30}),
)
MODEL_JUNK = HOSTILE_NAMES | JUNK


def message() -> st.SearchStrategy[Any]:
    valid = st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant", "tool"]), "content": TEXT},
        optional={"name": st.text(max_size=5)},
    )
    junk_for = {
        "role": st.sampled_from(["wizard", "", "USER", "developer"]) | JUNK,
        "content": st.lists(
            st.fixed_dictionaries(
                {"type": st.sampled_from(["text", "image_url", "x"])}, optional={"text": TEXT}
            )
            | JUNK,
            max_size=2,
        )
        | JUNK,
    }
    return near_valid(valid, junk_for)


MESSAGES = st.lists(message(), min_size=1, max_size=3)
FORMAT = st.sampled_from(
    ["json", "", {"type": "object"}, {"type": "array", "items": {"type": "integer"}}]
)
FORMAT_JUNK = st.sampled_from(["xml", {"type": "bogus"}, {"properties": 5}]) | JUNK
RESPONSE_FORMAT = st.sampled_from(
    [
        {"type": "text"},
        {"type": "json_object"},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
    ]
)
RESPONSE_TEXT_FORMAT = st.sampled_from(
    [
        {"type": "text"},
        {"type": "json_object"},
        {"type": "json_schema", "name": "x", "schema": {"type": "object"}},
    ]
)


def response_item() -> st.SearchStrategy[Any]:
    """An input item of the Responses API: a message, a call, a call's output."""
    valid = st.one_of(
        st.fixed_dictionaries(
            {
                "role": st.sampled_from(["user", "system", "developer", "assistant"]),
                "content": TEXT,
            },
            optional={"type": st.just("message")},
        ),
        st.fixed_dictionaries(
            {
                "type": st.just("function_call"),
                "call_id": st.sampled_from(["c1", "c2"]),
                "name": st.just("f"),
                "arguments": st.sampled_from(["{}", '{"a": 1}', "{broken"]),
            }
        ),
        st.fixed_dictionaries(
            {
                "type": st.just("function_call_output"),
                "call_id": st.sampled_from(["c1", "c2"]),
                "output": TEXT,
            }
        ),
    )
    junk_for = {
        "role": st.sampled_from(["wizard", "", "tool"]) | JUNK,
        "type": st.sampled_from(["reasoning", "item_reference", "web_search_call"]) | JUNK,
        "content": st.lists(
            st.fixed_dictionaries(
                {"type": st.sampled_from(["input_text", "input_image", "input_file", "x"])},
                optional={"text": TEXT, "image_url": st.sampled_from(["http://x/y.png", "data:,"])},
            )
            | JUNK,
            max_size=2,
        )
        | JUNK,
    }
    return near_valid(valid, junk_for)


RESPONSE_ITEM = response_item()


def anthropic_block() -> st.SearchStrategy[Any]:
    valid = st.one_of(
        st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}),
        st.fixed_dictionaries(
            {
                "type": st.just("tool_result"),
                "tool_use_id": st.text(max_size=5),
                "content": TEXT | st.just([{"type": "text", "text": "r"}]),
            },
            optional={"is_error": st.booleans()},
        ),
        st.fixed_dictionaries({"type": st.just("image"), "source": st.sampled_from(IMAGE_SOURCES)}),
        st.fixed_dictionaries(
            {"type": st.sampled_from(["thinking", "redacted_thinking"]), "thinking": TEXT}
        ),
    )
    junk_for = {"type": st.sampled_from(["document", "", "TEXT", "tool_use"]) | JUNK}
    return near_valid(valid, junk_for)


IMAGE_SOURCES = [
    {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},  # a PNG's start
    {"type": "base64", "data": "not base64!"},
    {"type": "url", "url": "http://169.254.169.254/x.png"},
    {"type": "file", "file_id": "f"},
]


def anthropic_message() -> st.SearchStrategy[Any]:
    valid = st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "assistant", "system"]),
            "content": TEXT | st.lists(anthropic_block(), max_size=3),
        }
    )
    junk_for = {"role": st.sampled_from(["tool", "", "USER"]) | JUNK}
    return near_valid(valid, junk_for)


ANTHROPIC_MESSAGES = st.lists(anthropic_message(), min_size=1, max_size=3)
ANTHROPIC_TOOL = {"name": "f", "input_schema": {"type": "object"}}
ANTHROPIC_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "system": TEXT | st.just([{"type": "text", "text": "Be brief.", "cache_control": {}}]),
    "temperature": st.floats(0, 1),
    "top_p": st.floats(0, 1),
    "top_k": st.integers(0, 100),
    "stop_sequences": st.lists(st.text(max_size=5), max_size=3),
    "tools": st.sampled_from(
        [[ANTHROPIC_TOOL], [{"type": "web_search_20250305", "name": "web_search"}], []]
    ),
    "tool_choice": st.sampled_from(
        [{"type": "auto"}, {"type": "any"}, {"type": "none"}, {"type": "tool", "name": "f"}]
    ),
    "thinking": st.sampled_from(
        [
            {"type": "disabled"},
            {"type": "adaptive"},
            {"type": "enabled", "budget_tokens": 1024},
            {"type": "enabled", "budget_tokens": -5},
            {"type": "enabled"},
        ]
    ),
    "metadata": st.just({"user_id": "u"}),
}

NEAR_VALID: dict[str, st.SearchStrategy[Any]] = {
    "/api/generate": near_valid(
        st.fixed_dictionaries(
            {"model": st.just("tiny"), "prompt": TEXT, "options": options()},
            optional={
                "stream": st.booleans(),
                "raw": st.booleans(),
                "system": TEXT,
                "suffix": TEXT,
                "format": FORMAT,
                "keep_alive": KEEP_ALIVE,
                "context": st.lists(st.integers(0, 300), max_size=5),
                "think": THINK,
            },
        ),
        {"model": MODEL_JUNK, "options": BAD_OPTIONS, "format": FORMAT_JUNK},
    ),
    "/api/chat": near_valid(
        st.fixed_dictionaries(
            {"model": st.just("tiny"), "messages": MESSAGES, "options": options()},
            optional={
                "stream": st.booleans(),
                "format": FORMAT,
                "tools": st.just([{"type": "function", "function": {"name": "f"}}]),
                "keep_alive": KEEP_ALIVE,
                "think": THINK,
            },
        ),
        {"model": MODEL_JUNK, "options": BAD_OPTIONS, "format": FORMAT_JUNK},
    ),
    "/api/embed": near_valid(
        st.fixed_dictionaries(
            {"model": st.just("tiny"), "input": TEXT | st.lists(TEXT, max_size=4)},
            optional={
                "truncate": st.booleans(),
                "dimensions": st.integers(1, 100),
                "options": options(),
                "keep_alive": KEEP_ALIVE,
            },
        ),
        {"model": MODEL_JUNK},
    ),
    "/api/show": near_valid(
        st.fixed_dictionaries({"model": st.just("tiny")}, optional={"verbose": st.booleans()}),
        {"model": MODEL_JUNK},
    ),
    "/v1/chat/completions": near_valid(
        st.fixed_dictionaries(
            {"model": st.just("tiny"), "messages": MESSAGES, "max_tokens": SMALL_COUNT},
            optional={
                "max_completion_tokens": SMALL_COUNT,
                "stream": st.booleans(),
                "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
                "temperature": st.floats(0, 2),
                "top_p": st.floats(0, 1),
                "n": st.just(1),
                "stop": st.lists(st.text(max_size=5), max_size=3),
                "response_format": RESPONSE_FORMAT,
                "seed": st.integers(),
                "num_ctx": st.sampled_from([16, 64, 2048]),
                "keep_alive": KEEP_ALIVE,
                "options": st.just({"top_k": 5}),
                "reasoning_effort": REASONING_EFFORT,
            },
        ),
        {
            "model": MODEL_JUNK,
            "max_tokens": BAD_COUNT,
            "max_completion_tokens": BAD_COUNT,
            "options": st.sampled_from([{"num_predict": -1, "bogus": 1}, [], "x"]),
        },
    ),
    "/v1/completions": near_valid(
        st.fixed_dictionaries(
            {
                "model": st.just("tiny"),
                "prompt": TEXT | st.lists(TEXT, max_size=3),
                "max_tokens": SMALL_COUNT,
            },
            optional={
                "stream": st.booleans(),
                "echo": st.booleans(),
                "suffix": TEXT,
                "temperature": st.floats(0, 2),
                "stop": st.lists(st.text(max_size=5), max_size=3),
            },
        ),
        {"model": MODEL_JUNK, "max_tokens": BAD_COUNT},
    ),
    "/v1/responses": near_valid(
        st.fixed_dictionaries(
            {
                "model": st.just("tiny"),
                "input": TEXT | st.lists(RESPONSE_ITEM, min_size=1, max_size=3),
                "max_output_tokens": st.integers(1, 4),
            },
            optional={
                "instructions": TEXT,
                "stream": st.booleans(),
                "store": st.booleans(),
                "temperature": st.floats(0, 2),
                "top_p": st.floats(0, 1),
                "text": st.fixed_dictionaries({"format": RESPONSE_TEXT_FORMAT}),
                "include": st.just(["reasoning.encrypted_content"]),
                "truncation": st.sampled_from(["auto", "disabled"]),
                "metadata": st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
                "previous_response_id": st.sampled_from(["resp_nothere", "", "../x"]),
                "tools": st.just([{"type": "function", "name": "f"}])
                | st.just([{"type": "web_search"}]),
                "options": st.just({"top_k": 5}),
                "reasoning": st.fixed_dictionaries({"effort": REASONING_EFFORT}),
            },
        ),
        {"model": MODEL_JUNK, "max_output_tokens": BAD_COUNT},
    ),
    "/v1/messages": near_valid(
        st.fixed_dictionaries(
            {"model": st.just("tiny"), "messages": ANTHROPIC_MESSAGES, "max_tokens": SMALL_COUNT},
            optional=ANTHROPIC_FIELDS | {"stream": st.booleans()},
        ),
        {"model": MODEL_JUNK, "max_tokens": BAD_COUNT | st.just(0)},
    ),
    "/v1/messages/count_tokens": near_valid(
        st.fixed_dictionaries(
            {"model": st.just("tiny"), "messages": ANTHROPIC_MESSAGES}, optional=ANTHROPIC_FIELDS
        ),
        {"model": MODEL_JUNK},
    ),
    "/v1/embeddings": near_valid(
        st.fixed_dictionaries(
            {"model": st.just("tiny"), "input": TEXT | st.lists(TEXT, min_size=1, max_size=4)},
            optional={
                "encoding_format": st.sampled_from(["float", "base64"]),
                "dimensions": st.integers(1, 100),
                "user": st.text(max_size=5),
            },
        ),
        {"model": MODEL_JUNK, "encoding_format": st.just("int8") | JUNK},
    ),
    "/tokenize": near_valid(
        st.fixed_dictionaries(
            {"content": TEXT | st.lists(TEXT | st.integers(-5, 1000), max_size=4)},
            optional={
                "model": st.just("tiny"),
                "add_special": st.booleans(),
                "parse_special": st.booleans(),
                "with_pieces": st.booleans(),
                "keep_alive": KEEP_ALIVE,
            },
        ),
        {"model": MODEL_JUNK},
    ),
    "/detokenize": near_valid(
        st.fixed_dictionaries(
            {
                "tokens": st.lists(
                    st.integers(-5, 1000) | st.sampled_from([2**31, 2**64]), max_size=8
                )
            },
            optional={"model": st.just("tiny")},
        ),
        {"model": MODEL_JUNK},
    ),
    "/apply-template": near_valid(
        st.fixed_dictionaries(
            {"messages": MESSAGES},
            optional={
                "model": st.just("tiny"),
                "tools": st.just([{"type": "function", "function": {"name": "f"}}]),
                "reasoning_effort": st.sampled_from(["low", "high"]),
                "chat_template_kwargs": st.dictionaries(st.text(max_size=5), JUNK, max_size=2),
            },
        ),
        {"model": MODEL_JUNK},
    ),
    "/api/tokenize": near_valid(
        st.fixed_dictionaries({"model": st.just("tiny"), "content": TEXT}),
        {"model": MODEL_JUNK},
    ),
    "/api/detokenize": near_valid(
        st.fixed_dictionaries(
            {"model": st.just("tiny"), "tokens": st.lists(st.integers(-5, 1000), max_size=8)}
        ),
        {"model": MODEL_JUNK},
    ),
    "/v1/rerank": near_valid(
        st.fixed_dictionaries(
            {
                # tiny cannot rank: a 400, now and then
                "model": st.sampled_from(["ranker", "ranker", "ranker", "tiny"]),
                "query": st.text(min_size=1, max_size=40) | TEXT,  # "" is refused
                "documents": st.lists(
                    TEXT | st.fixed_dictionaries({"text": TEXT}), min_size=1, max_size=4
                ),
            },
            optional={
                "top_n": st.integers(0, 6),
                "return_documents": st.booleans(),
                "options": st.just({"num_ctx": 256}),
                "keep_alive": KEEP_ALIVE,
            },
        ),
        {"model": MODEL_JUNK},
    ),
}


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


GARBAGE: st.SearchStrategy[bytes] = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=100).map(str.encode),
    JUNK.map(lambda value: json.dumps(value).encode()),  # valid JSON, mostly not an object
    st.integers(1, 50_000).map(_nested),
    st.integers(1, 2_000).map(lambda n: b'{"model":' * n),
    st.sampled_from(
        [
            b"",
            b"null",
            b'{"model": "tiny", "prompt": "x", "options": {"num_predict": NaN}}',
            b'{"model": "tiny", "prompt": Infinity}',
            b'{"model": "tiny", "prompt": "x", "options": {"num_predict": 1}',  # truncated
            b'{"model": "tiny"',
            b'\xef\xbb\xbf{"model": "tiny"}',
            b'{"model": "tiny", "model": 5}',
        ]
    ),
)


def body_bytes(body: Any) -> bytes:
    # allow_nan: NaN and Infinity go out as the raw tokens many JSON parsers accept.
    return json.dumps(body, allow_nan=True).encode()


# ---------------------------------------------------------------- checks


@pytest.fixture(scope="module")
def client(daemon: Daemon, tiny_reranker_path: Path) -> Iterator[httpx.Client]:
    add_model(daemon.home, tiny_reranker_path, "ranker")
    with httpx.Client(base_url=daemon.url, timeout=120, trust_env=False) as c:
        yield c


def check_answer(path: str, response: httpx.Response, body: bytes) -> None:
    shown = f"{path} {body[:300]!r} -> {response.status_code} {response.text[:300]!r}"
    assert response.status_code < 500, shown
    kind = response.headers.get("content-type", "")
    if response.status_code >= 400:
        error_message(path, response)
        return
    assert response.status_code == 200, shown
    if kind.startswith("application/x-ndjson"):
        lines = [json.loads(line) for line in response.text.splitlines() if line]
        assert lines and not any("error" in line for line in lines), shown
        assert lines[-1]["done"] is True, shown
    elif kind.startswith("text/event-stream") and path == "/v1/responses":
        # Named events, no [DONE]: the last says how the response ended.
        blocks = [b for b in response.text.split("\n\n") if b and not b.startswith(":")]
        names = [b.split("\n")[0].removeprefix("event: ") for b in blocks]
        assert names and names[-1] in ("response.completed", "response.incomplete"), shown
        assert "error" not in names and "response.failed" not in names, shown
    elif kind.startswith("text/event-stream") and path.startswith("/v1/messages"):
        # Anthropic's: named events, each data an object of that type, no [DONE].
        frames = [e.split("\n", 1) for e in response.text.split("\n\n") if e]
        pairs = [
            (n.removeprefix("event: "), json.loads(d.removeprefix("data: "))) for n, d in frames
        ]
        assert all(name == data["type"] for name, data in pairs), shown
        names = [name for name, _ in pairs]
        assert names[0] == "message_start" and names[-1] == "message_stop", shown
        assert "error" not in names, shown
    elif kind.startswith("text/event-stream"):
        events = [e.removeprefix("data: ") for e in response.text.split("\n\n") if e]
        assert events[-1] == "[DONE]", shown
        assert not any("error" in json.loads(e) for e in events[:-1]), shown
    else:
        assert isinstance(response.json(), dict), shown


def post_and_check(client: httpx.Client, path: str, body: bytes) -> None:
    response = client.post(path, content=body, headers={"Content-Type": "application/json"})
    event(f"{path}: {response.status_code}")  # --hypothesis-show-statistics
    check_answer(path, response, body)
    assert client.get("/api/version").status_code == 200, "the daemon stopped answering"


@pytest.fixture
def unchanged(daemon: Daemon) -> Iterator[None]:
    with untouched(daemon):
        yield


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("path", list(NEAR_VALID))
@FUZZ
@given(data=st.data())
def test_near_valid_bodies(
    path: str, data: st.DataObject, client: httpx.Client, unchanged: None
) -> None:
    body = data.draw(NEAR_VALID[path], label="body")
    post_and_check(client, path, body_bytes(body))


@pytest.mark.parametrize("path", list(NEAR_VALID))
@settings(FUZZ, max_examples=15)
@given(body=GARBAGE)
def test_garbage_bodies(path: str, body: bytes, client: httpx.Client, unchanged: None) -> None:
    post_and_check(client, path, body)


# /v1/audio/transcriptions: multipart forms, near-valid (a sound for the audio model)
# and not (other files, other models, junk in every field).
FORM_TEXT = st.text(max_size=20).filter(lambda t: "\x00" not in t)
TRANSCRIPTION_FORMS = st.fixed_dictionaries(
    {"model": st.sampled_from(["tiny-audio", "tiny"]) | HOSTILE_NAMES.filter(bool)},
    optional={
        "language": FORM_TEXT,
        "prompt": FORM_TEXT,
        "response_format": st.sampled_from(["json", "text", "verbose_json", "srt", "xml", ""]),
        "temperature": st.sampled_from(["0", "0.5", "2.5", "-1", "NaN", "inf", "x", ""]),
        "max_tokens": st.sampled_from(["1", "2", "0", "-1", "1e400", "x"]),
        "stream": st.sampled_from(["false", "true", "x"]),
    },
)
SOUND_FILES = st.one_of(
    st.builds(lambda f: sound(f, seconds=0.25), st.sampled_from([0, 220, 440])),
    st.just(png(1)),
    st.binary(max_size=200),
    st.just(b"RIFF\x00\x00\x00\x00WAVEfmt "),  # a WAV's header, cut short
)


@pytest.fixture(scope="module")
def audio_model(daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("fuzz-audio")
    model = write_tiny_gguf(folder / "tiny.gguf")
    add_model(daemon.home, model, "tiny-audio", write_tiny_audio_projector(folder / "a.gguf"))
    return "tiny-audio"


@settings(FUZZ, max_examples=20)
@given(form=TRANSCRIPTION_FORMS, data=SOUND_FILES)
def test_transcription_forms(
    form: dict[str, str], data: bytes, audio_model: str, client: httpx.Client, unchanged: None
) -> None:
    if form["model"] == audio_model:
        form = {**form, "max_tokens": form.get("max_tokens", "2")}  # gibberish, cut short
    path = "/v1/audio/transcriptions"
    response = client.post(path, data=form, files={"file": ("f.wav", data)})
    event(f"{path}: {response.status_code}")
    assert response.status_code < 500, (form, data[:40], response.text[:300])
    if response.status_code >= 400:
        error_message(path, response)
    elif form.get("response_format") == "text":
        assert response.headers["content-type"].startswith("text/plain")
    else:
        assert isinstance(response.json()["text"], str)
    assert client.get("/api/version").status_code == 200, "the daemon stopped answering"


# ---------------------------------------------------------------- schemathesis

# Every operation in the daemon's OpenAPI schema (checked below, so a new route must be
# added here to be fuzzed).
OPERATIONS = [
    "GET /",
    "GET /health",
    "GET /metrics",
    "GET /api/version",
    "GET /api/tags",
    "GET /api/ps",
    "POST /api/show",
    "DELETE /api/delete",
    "POST /api/copy",
    "POST /api/pull",
    "POST /api/create",
    "HEAD /api/blobs/{digest}",
    "POST /api/blobs/{digest}",
    "POST /api/generate",
    "POST /api/chat",
    "POST /api/embed",
    "POST /api/embeddings",
    "GET /v1/models",
    "GET /v1/models/{name}",
    "POST /v1/chat/completions",
    "POST /v1/completions",
    "POST /v1/embeddings",
    "POST /v1/responses",
    "GET /v1/responses/{response_id}",
    "GET /v1/responses/{response_id}/input_items",
    "DELETE /v1/responses/{response_id}",
    "POST /v1/messages",
    "POST /v1/messages/count_tokens",
    "POST /tokenize",
    "POST /detokenize",
    "POST /apply-template",
    "POST /api/tokenize",
    "POST /api/detokenize",
    "POST /v1/audio/transcriptions",
    "POST /v1/rerank",
    "GET /web/{name}",
]
# Operations whose body names a model that may be replaced by the real one; not delete
# or copy (the store is this daemon's own, but fuzzing should not empty it).
RUNS_A_MODEL = {
    "POST /api/show",
    "POST /api/generate",
    "POST /api/chat",
    "POST /api/embed",
    "POST /api/embeddings",
    "POST /v1/chat/completions",
    "POST /v1/completions",
    "POST /v1/embeddings",
    "POST /v1/responses",
    "POST /v1/messages",
    "POST /v1/messages/count_tokens",
    "POST /tokenize",
    "POST /detokenize",
    "POST /apply-template",
    "POST /api/tokenize",
    "POST /api/detokenize",
    "POST /v1/rerank",
}
# Operations with a body, so that schemathesis can also send data the schema forbids.
TAKES_INPUT = RUNS_A_MODEL | {
    "DELETE /api/delete",
    "POST /api/copy",
    "POST /api/pull",
    "POST /api/create",
    "POST /v1/audio/transcriptions",
}
CASES = [(label, GenerationMode.POSITIVE) for label in OPERATIONS] + [
    (label, GenerationMode.NEGATIVE) for label in OPERATIONS if label in TAKES_INPUT
]
CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
    schemathesis.checks.negative_data_rejection,
]


@pytest.fixture(scope="module")
def schema_daemon(
    tmp_path_factory: pytest.TempPathFactory, tiny_gguf_path: Path, tiny_reranker_path: Path
) -> Iterator[Daemon]:
    """A daemon of its own, since schemathesis may delete, copy and pull; pulls go to an
    empty fake Hub on loopback (every repository is a 404), never to the network. It
    serves ``tiny`` and the tiny reranker as ``ranker``."""
    hub = FakeHub().start()
    home = tmp_path_factory.mktemp("schemathesis") / "localserve-home"
    try:
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"}
        with running_daemon(home, tiny_gguf_path, env=env) as started:
            add_model(home, tiny_reranker_path, "ranker")
            yield started
    finally:
        hub.stop()


@pytest.fixture(scope="module")
def api_schema(schema_daemon: Daemon) -> BaseSchema:
    return schemathesis.openapi.from_url(f"{schema_daemon.url}/openapi.json")


def test_schema_lists_every_operation_and_its_errors(api_schema: BaseSchema) -> None:
    labels = {result.ok().label for result in api_schema.get_all_operations()}
    assert labels == set(OPERATIONS)
    for path, methods in api_schema.raw_schema["paths"].items():
        error = (
            "AnthropicError"
            if path.startswith("/v1/messages")
            else "OpenAIError"
            if path.startswith("/v1")
            else "OllamaError"
        )
        for method, operation in methods.items():
            responses = operation["responses"]
            # Bad input is a 400 here, never FastAPI's default 422.
            assert "422" not in responses, (method, path)
            for status in ("400", "default"):
                schema = responses[status]["content"]["application/json"]["schema"]
                assert schema == {"$ref": f"#/components/schemas/{error}"}, (method, path)


def use_the_model(case: schemathesis.Case, label: str) -> None:
    """Point a valid body at the real model, with its output capped."""
    body = case.body
    if label not in RUNS_A_MODEL or not isinstance(body, dict):
        return
    body["model"] = "tiny"
    if label == "POST /v1/rerank":
        body["model"] = "ranker"
    elif label == "POST /v1/responses":
        body["max_output_tokens"] = 2
    elif label.startswith("POST /v1"):
        body["max_tokens"] = 2
        body.pop("max_completion_tokens", None)
    elif body.get("options") is None or isinstance(body["options"], dict):
        body["options"] = {**(body.get("options") or {}), "num_predict": 2}


@pytest.mark.parametrize(("label", "mode"), CASES)
def test_schemathesis(
    label: str, mode: GenerationMode, api_schema: BaseSchema, schema_daemon: Daemon
) -> None:
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None

    @settings(FUZZ, max_examples=10)
    @given(case=operation.as_strategy(generation_mode=mode), use_tiny=st.booleans())
    def check(case: schemathesis.Case, use_tiny: bool) -> None:
        # Invalid bodies are left as they are: changing them might make them valid. Their
        # model names are random, so they never reach a model.
        if use_tiny and mode is GenerationMode.POSITIVE:
            use_the_model(case, label)
        response = case.call(base_url=schema_daemon.url, timeout=60)
        case.validate_response(response, checks=CHECKS)
        assert case.call(base_url=schema_daemon.url, timeout=60).status_code < 500

    check()
