"""The bad-input battery against a real daemon and the real CLI: every route and every
command that takes a name, fed malformed JSON, wrong types, missing and unknown fields,
out-of-range, NaN and infinite options, hostile names, oversized bodies and prompts.

Each case must get a 4xx with a JSON error (OpenAI's shape on /v1, Anthropic's on
/v1/messages), or from the CLI one
``Error:`` line (and at most a hint) with the documented exit code and no traceback;
afterwards the daemon answers, its store has not changed and its log holds no error.
(tests/unit/test_security.py has the guard's own cases, in-process.)
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from localserve.cli.app import main
from localserve.server.security import MAX_BODY
from tests.support.answers import error_message, untouched
from tests.support.cli import cli
from tests.support.daemon import Daemon, running_daemon
from tests.support.media import png, sound

JSON = {"Content-Type": "application/json"}
CHAT = '"messages": [{"role": "user", "content": "hi"}]'
LONG_PROMPT = "word " * 20_000  # the daemon's context is 4096 tokens, the model's 2048

HOSTILE_NAMES = [
    "../../etc/passwd",
    "a\x00b",
    "a" * 5000,
    "file:///etc/passwd",
    "http://169.254.169.254/latest/meta-data",
    "https://[fe80::1]/x",
    "hf.co/../../x",
    "~/.ssh/id_rsa",
    "/etc/passwd",
    "C:\\Windows\\win.ini",
    "tiny:../../x",
    "tiny\n",
    " ",
]
# Every route that reads a body, with the field that names its model.
BODY_ROUTES = [
    ("POST", "/api/show", "model"),
    ("DELETE", "/api/delete", "model"),
    ("POST", "/api/copy", "source"),
    ("POST", "/api/pull", "model"),
    ("POST", "/api/generate", "model"),
    ("POST", "/api/chat", "model"),
    ("POST", "/api/embed", "model"),
    ("POST", "/api/embeddings", "model"),
    ("POST", "/v1/chat/completions", "model"),
    ("POST", "/v1/completions", "model"),
    ("POST", "/v1/embeddings", "model"),
    ("POST", "/v1/responses", "model"),
    ("POST", "/v1/messages", "model"),
    ("POST", "/v1/messages/count_tokens", "model"),
    ("POST", "/api/tokenize", "model"),
    ("POST", "/api/detokenize", "model"),
    ("POST", "/v1/rerank", "model"),
    ("POST", "/rerank", "model"),
]
# llama-server's routes, whose bodies may leave the model out while one is loaded.
MODEL_OPTIONAL_ROUTES = [
    ("POST", "/tokenize", "model"),
    ("POST", "/detokenize", "model"),
    ("POST", "/apply-template", "model"),
]
# Bad bodies any of them must refuse: (body, content type, what the message says).
BAD_BODIES = [
    (b"{not json", "application/json", "invalid JSON"),
    (b'{"model": "tiny"', "application/json", "invalid JSON"),
    (b"", "application/json", "empty"),
    (b"null", "application/json", "JSON object"),
    (b"[]", "application/json", "JSON object"),
    (b'"tiny"', "application/json", "JSON object"),
    (b"5", "application/json", "JSON object"),
    (b'{"model": "tiny"}', "text/plain", "Content-Type: application/json"),
    (b"{}", "application/json", "missing field '{field}'"),
    (b'{"bogus": 1, "x-unknown": [1]}', "application/json", "missing field '{field}'"),
    (b'{"{field}": 5}', "application/json", "{field}"),
    (b'{"{field}": NaN}', "application/json", "{field}"),
    (b'{"{field}": ["tiny"]}', "application/json", "{field}"),
    (b'{"{field}": {"name": "tiny"}}', "application/json", "{field}"),
    (b'{"{field}": "\\ud800"}', "application/json", "Unicode"),
    (b'{"{field}": ""}', "application/json", "at least 1 character"),
]
# The other fields any of these routes needs, valid.
BODY_FIELDS = {
    "destination": "copied",
    "messages": [{"role": "user", "content": "hi"}],
    "input": "x",
    "prompt": "x",
    "max_tokens": 5,
    "tokens": [1],
    "query": "x",
    "documents": ["x"],
}


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=daemon.url, timeout=120, trust_env=False) as c:
        yield c


@pytest.fixture
def unchanged(daemon: Daemon) -> Iterator[None]:
    with untouched(daemon):
        yield


def refused(
    client: httpx.Client,
    method: str,
    path: str,
    body: bytes | None = None,
    status: int = 400,
    content_type: str = "application/json",
) -> str:
    """Send a request that must be refused with ``status``; returns the error message."""
    headers = {"Content-Type": content_type} if body is not None else {}
    response = client.request(method, path, content=body, headers=headers)
    assert response.status_code == status, f"{method} {path} {body!r:.200}: {response.text:.300}"
    return error_message(path, response)


# ------------------------------------------------------------------ every body route


@pytest.mark.parametrize(("body", "content_type", "needle"), BAD_BODIES)
@pytest.mark.parametrize(("method", "path", "field"), BODY_ROUTES)
def test_bad_bodies_on_every_route(
    client: httpx.Client,
    unchanged: None,
    method: str,
    path: str,
    field: str,
    body: bytes,
    content_type: str,
    needle: str,
) -> None:
    assert_bad_body_refused(client, method, path, field, body, content_type, needle)


def assert_bad_body_refused(
    client: httpx.Client,
    method: str,
    path: str,
    field: str,
    body: bytes,
    content_type: str,
    needle: str,
) -> None:
    payload = body.replace(b"{field}", field.encode())
    message = refused(client, method, path, payload, content_type=content_type)
    assert needle.format(field=field) in message


@pytest.mark.parametrize(
    ("body", "content_type", "needle"), [b for b in BAD_BODIES if "missing field" not in b[2]]
)
@pytest.mark.parametrize(("method", "path", "field"), MODEL_OPTIONAL_ROUTES)
def test_bad_bodies_where_the_model_may_be_left_out(
    client: httpx.Client,
    unchanged: None,
    method: str,
    path: str,
    field: str,
    body: bytes,
    content_type: str,
    needle: str,
) -> None:
    assert_bad_body_refused(client, method, path, field, body, content_type, needle)


@pytest.mark.parametrize("name", HOSTILE_NAMES)
@pytest.mark.parametrize(("method", "path", "field"), BODY_ROUTES + MODEL_OPTIONAL_ROUTES)
def test_hostile_names_on_every_route(
    client: httpx.Client, unchanged: None, method: str, path: str, field: str, name: str
) -> None:
    response = client.request(method, path, json={**BODY_FIELDS, field: name})
    assert response.status_code == 400, response.text
    assert "invalid model name" in error_message(path, response)


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_copy_destinations(client: httpx.Client, unchanged: None, name: str) -> None:
    response = client.post("/api/copy", json={"source": "tiny", "destination": name})
    assert response.status_code == 400, response.text
    assert "invalid model name" in error_message("/api/copy", response)


@pytest.mark.parametrize("name", [n for n in HOSTILE_NAMES if n.strip()])
def test_hostile_names_in_the_model_path(client: httpx.Client, unchanged: None, name: str) -> None:
    # The name percent-encoded, and as it is where a URL can hold it.
    paths = [f"/v1/models/{quote(name, safe='')}"]
    if name.isprintable():
        paths.append(f"/v1/models/{name}")
    for path in paths:
        response = client.get(path)
        assert response.status_code in (400, 404), f"{path[:100]}: {response.text[:300]}"
        # httpx resolves "..", so the request may land outside /v1: check that path's shape.
        error_message(response.request.url.path, response)


@pytest.mark.parametrize("name", [n for n in HOSTILE_NAMES if n.strip()])
def test_hostile_response_ids(client: httpx.Client, unchanged: None, name: str) -> None:
    """Ids of kept responses name files: none of these may reach outside them."""
    for method, suffix in (("GET", ""), ("GET", "/input_items"), ("DELETE", "")):
        path = f"/v1/responses/{quote(name, safe='')}{suffix}"
        response = client.request(method, path)
        assert response.status_code in (400, 404), f"{path[:100]}: {response.text[:300]}"
        error_message(response.request.url.path, response)
    body = {"model": "tiny", "input": "x", "previous_response_id": name}
    response = client.post("/v1/responses", json=body)
    assert response.status_code in (400, 404), response.text
    error_message("/v1/responses", response)


def test_names_that_are_fine_but_absent_are_404(client: httpx.Client, unchanged: None) -> None:
    for method, path, field in BODY_ROUTES + MODEL_OPTIONAL_ROUTES:
        if path == "/api/pull":
            continue  # pulls only Hugging Face names; this daemon is offline
        response = client.request(method, path, json={**BODY_FIELDS, field: "nothere"})
        assert response.status_code == 404, f"{path}: {response.text}"
        assert "not found" in error_message(path, response)
    response = client.get("/v1/models/nothere")
    assert response.status_code == 404
    assert error_message("/v1/models", response)
    for method, path in (("GET", "/v1/responses/resp_nothere"), ("DELETE", "/v1/responses/resp_0")):
        response = client.request(method, path)
        assert response.status_code == 404, response.text
        assert "not found" in error_message(path, response)
    body = {"model": "tiny", "input": "x", "previous_response_id": "resp_nothere"}
    response = client.post("/v1/responses", json=body)
    assert response.status_code == 404, response.text
    assert "'resp_nothere' not found" in error_message("/v1/responses", response)


# ------------------------------------------------------------------ per-route fields

RERANK = '{"model": "tiny", "query": "q", "documents": ["a"], %s}'

GENERATE = '{"model": "tiny", "prompt": "hi", %s}'
OPTIONS = '{"model": "tiny", "prompt": "hi", "options": {%s}}'
CHAT_WITH = '{"model": "tiny", %s}'
V1_CHAT = '{"model": "tiny", ' + CHAT + ", %s}"
RESPONSES = '{"model": "tiny", "input": "hi", %s}'
MESSAGES = '{"model": "tiny", "max_tokens": 5, %s}'
ASK = '{"model": "tiny", "max_tokens": 5, ' + CHAT + ", %s}"
IMAGE = '"messages": [{"role": "user", "content": [{"type": "image", "source": %s}]}]'

FIELD_CASES = [
    # /api/generate: options out of range, NaN and infinite (raw JSON tokens), wrong types
    ("/api/generate", OPTIONS % '"num_predict": -3', "num_predict"),
    ("/api/generate", OPTIONS % '"num_predict": 1e400', "num_predict"),
    ("/api/generate", OPTIONS % '"num_predict": NaN', "num_predict"),
    ("/api/generate", OPTIONS % '"num_predict": Infinity', "num_predict"),
    ("/api/generate", OPTIONS % '"num_predict": 100000000000000000000000000000', "num_predict"),
    ("/api/generate", OPTIONS % '"num_predict": "5"', "num_predict"),
    ("/api/generate", OPTIONS % '"num_predict": true', "num_predict"),
    ("/api/generate", OPTIONS % '"num_ctx": -5', "num_ctx"),
    ("/api/generate", OPTIONS % '"num_ctx": 0', "num_ctx"),
    ("/api/generate", OPTIONS % '"num_ctx": 8388608', "num_ctx"),
    ("/api/generate", OPTIONS % '"num_ctx": 2048.5', "num_ctx"),
    ("/api/generate", OPTIONS % '"num_batch": 1', "num_batch"),
    ("/api/generate", OPTIONS % '"num_batch": -1', "num_batch"),
    ("/api/generate", OPTIONS % '"num_thread": 100000', "num_thread"),
    ("/api/generate", OPTIONS % '"temperature": -1', "temperature"),
    ("/api/generate", OPTIONS % '"temperature": NaN', "temperature"),
    ("/api/generate", OPTIONS % '"temperature": -Infinity', "temperature"),
    ("/api/generate", OPTIONS % '"temperature": "hot"', "temperature"),
    ("/api/generate", OPTIONS % '"top_k": -1', "top_k"),
    ("/api/generate", OPTIONS % '"top_p": 1.5', "top_p"),
    ("/api/generate", OPTIONS % '"min_p": -0.1', "min_p"),
    ("/api/generate", OPTIONS % '"repeat_penalty": 1e999', "repeat_penalty"),
    ("/api/generate", OPTIONS % '"seed": 18446744073709551616', "seed"),
    ("/api/generate", OPTIONS % '"seed": 1.5', "seed"),
    ("/api/generate", OPTIONS % '"stop": [5]', "stop"),
    ("/api/generate", OPTIONS % ('"stop": [' + ", ".join(['"x"'] * 17) + "]"), "stop"),
    ("/api/generate", OPTIONS % ('"stop": ["' + "x" * 1001 + '"]'), "stop"),
    ("/api/generate", OPTIONS % '"temprature": 1', "unknown option"),
    ("/api/generate", GENERATE % '"options": "fast"', "options"),
    ("/api/generate", GENERATE % '"options": [1]', "options"),
    ("/api/generate", GENERATE % '"keep_alive": NaN', "keep_alive"),
    ("/api/generate", GENERATE % '"keep_alive": "soon"', "duration"),
    ("/api/generate", GENERATE % '"keep_alive": [5]', "keep_alive"),
    ("/api/generate", GENERATE % '"stream": "yes"', "stream"),
    ("/api/generate", GENERATE % '"stream": 1', "stream"),
    ("/api/generate", GENERATE % '"raw": "false"', "raw"),
    ("/api/generate", GENERATE % '"format": "xml"', "format"),
    ("/api/generate", GENERATE % '"format": {"type": "bogus"}', "schema"),
    ("/api/generate", GENERATE % '"images": ["aGk="]', "images"),
    ("/api/generate", GENERATE % '"context": [-1]', "context"),
    ("/api/generate", GENERATE % '"context": [1000000000]', "context"),
    ("/api/generate", GENERATE % '"context": "x"', "context"),
    ("/api/generate", GENERATE % '"system": 5', "system"),
    ("/api/generate", '{"model": "tiny", "prompt": 5}', "prompt"),
    ("/api/generate", '{"model": "tiny", "prompt": "\\udfff"}', "Unicode"),
    ("/api/generate", '{"model": "tiny", "prompt": "' + LONG_PROMPT + '"}', "context"),
    ("/api/generate", GENERATE % '"suffix": "def f():"', "tiny does not support insert"),
    # /api/chat: messages of the wrong shape, unknown roles, images, beyond the context
    ("/api/chat", CHAT_WITH % '"messages": "hi"', "messages"),
    ("/api/chat", CHAT_WITH % '"messages": [5]', "messages"),
    ("/api/chat", CHAT_WITH % '"messages": [{"role": "wizard", "content": "hi"}]', "role"),
    ("/api/chat", CHAT_WITH % '"messages": [{"role": "", "content": "hi"}]', "role"),
    ("/api/chat", CHAT_WITH % '"messages": [{"content": "hi"}]', "role"),
    ("/api/chat", CHAT_WITH % '"messages": [{"role": 5, "content": "hi"}]', "role"),
    ("/api/chat", CHAT_WITH % '"messages": [{"role": "user", "content": 5}]', "content"),
    (
        "/api/chat",
        CHAT_WITH % '"messages": [{"role": "user", "content": "hi", "images": ["aGk="]}]',
        "images",
    ),
    (
        "/api/chat",
        CHAT_WITH % '"messages": [{"role": "user", "content": [{"type": "image_url"}]}]',
        "image",
    ),
    (
        "/api/chat",
        CHAT_WITH % ('"messages": [{"role": "user", "content": "' + LONG_PROMPT + '"}]'),
        "context",
    ),
    ("/api/chat", CHAT_WITH % (CHAT + ', "tools": "x"'), "tools"),
    ("/api/chat", CHAT_WITH % (CHAT + ', "format": {"properties": 5}'), "schema"),
    ("/api/chat", CHAT_WITH % (CHAT + ', "options": {"num_predict": NaN}'), "num_predict"),
    # /api/embed and /api/embeddings
    ("/api/embed", '{"model": "tiny", "input": 5}', "input"),
    ("/api/embed", '{"model": "tiny", "input": [5]}', "input"),
    ("/api/embed", '{"model": "tiny", "input": [["a"]]}', "input"),
    ("/api/embed", '{"model": "tiny", "input": "x", "dimensions": 0}', "dimensions"),
    ("/api/embed", '{"model": "tiny", "input": "x", "dimensions": -1}', "dimensions"),
    ("/api/embed", '{"model": "tiny", "input": "x", "truncate": "no"}', "truncate"),
    (
        "/api/embed",
        '{"model": "tiny", "input": "' + LONG_PROMPT + '", "truncate": false}',
        "context",
    ),
    ("/api/embed", '{"model": "tiny", "input": "x", "options": {"num_ctx": NaN}}', "num_ctx"),
    ("/api/embeddings", '{"model": "tiny", "prompt": 5}', "prompt"),
    (
        "/api/embeddings",
        '{"model": "tiny", "prompt": "x", "keep_alive": Infinity, "options": 1}',
        "options",
    ),
    # /api/show, /api/pull, /api/copy
    ("/api/show", '{"model": "tiny", "verbose": "yes"}', "verbose"),
    ("/api/pull", '{"model": "llama3"}', "local name"),
    ("/api/pull", '{"model": "owner/repo", "stream": "no"}', "stream"),
    ("/api/copy", '{"source": "tiny"}', "destination"),
    ("/api/copy", '{"source": "tiny", "destination": 5}', "destination"),
    # /v1/chat/completions
    ("/v1/chat/completions", '{"model": "tiny", "messages": []}', "messages"),
    ("/v1/chat/completions", '{"model": "tiny"}', "messages"),
    (
        "/v1/chat/completions",
        '{"model": "tiny", "messages": [{"role": "nobody", "content": "x"}]}',
        "role",
    ),
    ("/v1/chat/completions", '{"model": "tiny", "messages": [{"content": "x"}]}', "role"),
    (
        "/v1/chat/completions",
        '{"model": "tiny", "messages": [{"role": "user", "content": 5}]}',
        "content",
    ),
    (
        "/v1/chat/completions",
        '{"model": "tiny", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]}',
        "image",
    ),
    (
        "/v1/chat/completions",
        '{"model": "tiny", "messages": [{"role": "user", "content": "' + LONG_PROMPT + '"}]}',
        "context",
    ),
    (
        "/v1/chat/completions",
        '{"model": "tiny", "messages": [{"role": "user", "content": "\\ud800"}]}',
        "Unicode",
    ),
    ("/v1/chat/completions", V1_CHAT % '"max_tokens": -1', "max_tokens"),
    ("/v1/chat/completions", V1_CHAT % '"max_tokens": 1e400', "max_tokens"),
    ("/v1/chat/completions", V1_CHAT % '"max_tokens": NaN', "max_tokens"),
    ("/v1/chat/completions", V1_CHAT % '"max_tokens": "5"', "max_tokens"),
    ("/v1/chat/completions", V1_CHAT % '"max_tokens": 99999999999999999999', "num_predict"),
    ("/v1/chat/completions", V1_CHAT % '"max_completion_tokens": -5', "max_completion_tokens"),
    ("/v1/chat/completions", V1_CHAT % '"temperature": 3', "temperature"),
    ("/v1/chat/completions", V1_CHAT % '"temperature": NaN', "temperature"),
    ("/v1/chat/completions", V1_CHAT % '"top_p": Infinity', "top_p"),
    ("/v1/chat/completions", V1_CHAT % '"frequency_penalty": -3', "frequency_penalty"),
    ("/v1/chat/completions", V1_CHAT % '"seed": "x"', "seed"),
    ("/v1/chat/completions", V1_CHAT % '"seed": 99999999999999999999999', "seed"),
    ("/v1/chat/completions", V1_CHAT % '"n": 17', "n"),
    ("/v1/chat/completions", V1_CHAT % '"stream": "yes"', "stream"),
    ("/v1/chat/completions", V1_CHAT % '"stream_options": 5', "stream_options"),
    ("/v1/chat/completions", V1_CHAT % '"stop": [5]', "stop"),
    ("/v1/chat/completions", V1_CHAT % '"response_format": {"type": "xml"}', "response_format"),
    ("/v1/chat/completions", V1_CHAT % '"response_format": {"type": "json_schema"}', "schema"),
    ("/v1/chat/completions", V1_CHAT % '"num_ctx": 8', "num_ctx"),
    ("/v1/chat/completions", V1_CHAT % '"keep_alive": NaN', "keep_alive"),
    ("/v1/chat/completions", V1_CHAT % '"keep_alive": "soon"', "duration"),
    ("/v1/chat/completions", V1_CHAT % '"options": {"bogus": 1}', "unknown option"),
    ("/v1/chat/completions", V1_CHAT % '"options": {"num_batch": 2}', "num_batch"),
    (
        "/v1/chat/completions",
        '{"model": "tiny", "messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}]}',
        "arguments",
    ),
    # /v1/completions
    ("/v1/completions", '{"model": "tiny", "prompt": 5}', "prompt"),
    ("/v1/completions", '{"model": "tiny", "prompt": [5]}', "prompt"),
    ("/v1/completions", '{"model": "tiny", "prompt": "' + LONG_PROMPT + '"}', "context"),
    ("/v1/completions", '{"model": "tiny", "prompt": "x", "max_tokens": -1}', "max_tokens"),
    ("/v1/completions", '{"model": "tiny", "prompt": "x", "echo": "yes"}', "echo"),
    (
        "/v1/completions",
        '{"model": "tiny", "prompt": "x", "suffix": "}"}',
        "does not support insert",
    ),
    # /v1/embeddings
    ("/v1/embeddings", '{"model": "tiny"}', "input"),
    ("/v1/embeddings", '{"model": "tiny", "input": []}', "input"),
    ("/v1/embeddings", '{"model": "tiny", "input": ""}', "input"),
    ("/v1/embeddings", '{"model": "tiny", "input": [[1, 2, 3]]}', "input"),
    (
        "/v1/embeddings",
        '{"model": "tiny", "input": "x", "encoding_format": "int8"}',
        "encoding_format",
    ),
    ("/v1/embeddings", '{"model": "tiny", "input": "x", "dimensions": 0}', "dimensions"),
    # /v1/responses
    ("/v1/responses", '{"model": "tiny"}', "input is empty"),
    ("/v1/responses", '{"model": "tiny", "input": 5}', "input"),
    ("/v1/responses", '{"model": "tiny", "input": [5]}', "input"),
    ("/v1/responses", '{"model": "tiny", "input": []}', "input is empty"),
    ("/v1/responses", '{"model": "tiny", "input": [{"role": "wizard", "content": "x"}]}', "role"),
    ("/v1/responses", '{"model": "tiny", "input": [{"type": "computer_call"}]}', "computer_call"),
    ("/v1/responses", '{"model": "tiny", "input": [{"role": "user", "content": 5}]}', "content"),
    ("/v1/responses", '{"model": "tiny", "input": "' + LONG_PROMPT + '"}', "context"),
    ("/v1/responses", RESPONSES % '"instructions": 5', "instructions"),
    ("/v1/responses", RESPONSES % '"max_output_tokens": 0', "max_output_tokens"),
    ("/v1/responses", RESPONSES % '"max_output_tokens": NaN', "max_output_tokens"),
    ("/v1/responses", RESPONSES % '"max_output_tokens": 99999999999999999999', "num_predict"),
    ("/v1/responses", RESPONSES % '"temperature": 3', "temperature"),
    ("/v1/responses", RESPONSES % '"top_p": Infinity', "top_p"),
    ("/v1/responses", RESPONSES % '"stream": "yes"', "stream"),
    ("/v1/responses", RESPONSES % '"store": 1', "store"),
    ("/v1/responses", RESPONSES % '"include": "all"', "include"),
    ("/v1/responses", RESPONSES % '"previous_response_id": 5', "previous_response_id"),
    ("/v1/responses", RESPONSES % '"text": {"format": {"type": "xml"}}', "text.format"),
    ("/v1/responses", RESPONSES % '"reasoning": {"effort": "max"}', "reasoning.effort"),
    ("/v1/responses", RESPONSES % '"tool_choice": "sometimes"', "tool_choice"),
    ("/v1/responses", RESPONSES % '"tools": [{"type": "web_search"}]', "'web_search'"),
    ("/v1/responses", RESPONSES % '"tools": [{"type": "mcp", "server_label": "x"}]', "'mcp'"),
    ("/v1/responses", RESPONSES % '"tools": [{"type": "function"}]', "no function name"),
    ("/v1/responses", RESPONSES % '"num_ctx": 8', "num_ctx"),
    ("/v1/responses", RESPONSES % '"options": {"bogus": 1}', "unknown option"),
    ("/v1/responses", RESPONSES % '"keep_alive": "soon"', "duration"),
    # /v1/messages (Anthropic's)
    ("/v1/messages", '{"model": "tiny", ' + CHAT + "}", "missing field 'max_tokens'"),
    ("/v1/messages", ASK.replace('"max_tokens": 5', '"max_tokens": 0') % '"x": 1', "max_tokens"),
    ("/v1/messages", ASK % '"max_tokens": 1e400', "max_tokens"),
    ("/v1/messages", ASK % '"temperature": 1.5', "temperature"),
    ("/v1/messages", ASK % '"temperature": NaN', "temperature"),
    ("/v1/messages", ASK % '"top_k": -1', "top_k"),
    ("/v1/messages", ASK % '"stop_sequences": [5]', "stop_sequences"),
    ("/v1/messages", ASK % '"system": 5', "system"),
    ("/v1/messages", ASK % '"thinking": {"type": "sometimes"}', "thinking"),
    ("/v1/messages", ASK % '"thinking": {"type": "enabled"}', "tiny does not support thinking"),
    ("/v1/messages", ASK % '"tool_choice": {"type": "any"}', "needs at least one tool"),
    (
        "/v1/messages",
        ASK % '"tools": [{"type": "bash_20250124", "name": "bash"}]',
        "Anthropic's server tools",
    ),
    (
        "/v1/messages",
        ASK % '"tools": [{"name": "f", "input_schema": {"type": "object"}}]',
        "tiny does not support tools",
    ),
    ("/v1/messages", MESSAGES % '"messages": []', "messages"),
    ("/v1/messages", MESSAGES % '"messages": [{"role": "tool", "content": "x"}]', "role"),
    ("/v1/messages", MESSAGES % '"messages": [{"role": "user", "content": 5}]', "content"),
    (
        "/v1/messages",
        MESSAGES % '"messages": [{"role": "user", "content": [{"type": "document"}]}]',
        "'document'",
    ),
    (
        "/v1/messages",
        MESSAGES % (IMAGE % '{"type": "url", "url": "http://169.254.169.254/x.png"}'),
        "does not fetch URLs",
    ),
    (
        "/v1/messages",
        MESSAGES % (IMAGE % '{"type": "base64", "media_type": "image/png", "data": "!!"}'),
        "not valid base64",
    ),
    (
        "/v1/messages",
        MESSAGES % ('"messages": [{"role": "user", "content": "' + LONG_PROMPT + '"}]'),
        "prompt is too long: ",
    ),
    # thinking budgets (checked before the model is asked whether it thinks)
    (
        "/api/chat",
        CHAT_WITH % (CHAT + ', "options": {"think_budget": -5}'),
        "think_budget must be between 0 and",
    ),
    ("/api/generate", OPTIONS % '"think_budget": "lots"', "think_budget must be an integer"),
    ("/v1/chat/completions", V1_CHAT % '"reasoning_effort": "extreme"', "reasoning_effort"),
    ("/v1/responses", RESPONSES % '"options": {"think_budget": -2}', "think_budget"),
    (
        "/v1/messages",
        ASK % '"thinking": {"type": "enabled", "budget_tokens": -1}',
        "budget_tokens",
    ),
    ("/v1/messages/count_tokens", '{"model": "tiny", "messages": 5}', "messages"),
    # Tokens and templates (llama-server's shapes, then Ollama-style)
    ("/tokenize", '{"model": "tiny", "content": 5}', "content"),
    ("/tokenize", '{"model": "tiny", "content": [1.5]}', "content"),
    ("/tokenize", '{"model": "tiny", "content": [true]}', "content"),
    ("/tokenize", '{"model": "tiny", "content": {"text": "x"}}', "content"),
    ("/tokenize", '{"model": "tiny", "content": [99999999]}', "vocabulary"),
    ("/tokenize", '{"model": "tiny", "content": [-1], "with_pieces": true}', "vocabulary"),
    ("/tokenize", '{"model": "tiny", "content": "x", "with_pieces": "yes"}', "with_pieces"),
    ("/tokenize", '{"model": "tiny", "content": "x", "add_special": 1}', "add_special"),
    ("/tokenize", '{"model": "tiny", "content": "\\udfff"}', "Unicode"),
    ("/tokenize", '{"model": "tiny", "keep_alive": "soon"}', "duration"),
    ("/tokenize", '{"model": "tiny", "options": {"num_ctx": NaN}}', "num_ctx"),
    ("/detokenize", '{"model": "tiny", "tokens": "1 2"}', "tokens"),
    ("/detokenize", '{"model": "tiny", "tokens": [1.5]}', "tokens"),
    ("/detokenize", '{"model": "tiny", "tokens": [1e400]}', "tokens"),
    ("/detokenize", '{"model": "tiny", "tokens": [-1]}', "vocabulary"),
    ("/detokenize", '{"model": "tiny", "tokens": [18446744073709551616]}', "vocabulary"),
    ("/apply-template", '{"model": "tiny"}', "messages"),
    ("/apply-template", '{"model": "tiny", "messages": []}', "messages"),
    ("/apply-template", CHAT_WITH % '"messages": [{"role": "wizard", "content": "hi"}]', "role"),
    ("/apply-template", V1_CHAT % '"tools": "x"', "tools"),
    ("/apply-template", V1_CHAT % '"reasoning_effort": "max"', "reasoning_effort"),
    ("/apply-template", V1_CHAT % '"chat_template_kwargs": 5', "chat_template_kwargs"),
    (
        "/apply-template",
        V1_CHAT % '"tools": [{"type": "function", "function": {"name": "f"}}]',
        "tiny does not support tools",
    ),
    ("/api/tokenize", '{"model": "tiny", "content": ["x"]}', "content"),
    ("/api/tokenize", '{"model": "tiny", "content": "x", "options": "fast"}', "options"),
    ("/api/detokenize", '{"model": "tiny"}', "missing field 'tokens'"),
    ("/api/detokenize", '{"model": "tiny", "tokens": ["a"]}', "tokens"),
    ("/api/detokenize", '{"model": "tiny", "tokens": [1000000]}', "vocabulary"),
    # /v1/rerank (and its other paths): the shape first, then whether the model can rank
    ("/v1/rerank", '{"model": "tiny", "documents": ["a"]}', "missing field 'query'"),
    ("/v1/rerank", '{"model": "tiny", "query": "q"}', "missing field 'documents'"),
    ("/v1/rerank", '{"model": "tiny", "query": "", "documents": ["a"]}', "query"),
    ("/v1/rerank", '{"model": "tiny", "query": 5, "documents": ["a"]}', "query"),
    ("/v1/rerank", '{"model": "tiny", "query": "q", "documents": []}', "documents"),
    ("/v1/rerank", '{"model": "tiny", "query": "q", "documents": "a"}', "documents"),
    ("/v1/rerank", '{"model": "tiny", "query": "q", "documents": [5]}', "documents"),
    ("/v1/rerank", '{"model": "tiny", "query": "q", "documents": [{"text": 5}]}', "documents"),
    ("/v1/rerank", '{"model": "tiny", "query": "\\ud800", "documents": ["a"]}', "Unicode"),
    ("/v1/rerank", RERANK % '"top_n": -1', "top_n"),
    ("/v1/rerank", RERANK % '"top_n": "2"', "top_n"),
    ("/v1/rerank", RERANK % '"top_n": 1.5', "top_n"),
    ("/v1/rerank", RERANK % '"top_n": NaN', "top_n"),
    ("/v1/rerank", RERANK % '"return_documents": "yes"', "return_documents"),
    ("/v1/rerank", RERANK % '"keep_alive": "soon"', "duration"),
    ("/v1/rerank", RERANK % '"options": {"num_ctx": -5}', "num_ctx"),
    ("/v1/rerank", RERANK % '"x": 1', "model tiny does not support reranking"),
    ("/rerank", RERANK % '"x": 1', "model tiny does not support reranking"),
    ("/reranking", RERANK % '"top_n": -1', "top_n"),
    (
        "/v1/messages/count_tokens",
        '{"model": "tiny", "system": [{"type": "image"}], ' + CHAT + "}",
        "system",
    ),
]


@pytest.mark.parametrize(("path", "body", "needle"), FIELD_CASES, ids=lambda v: str(v)[:60])
def test_bad_fields(
    client: httpx.Client, unchanged: None, path: str, body: str, needle: str
) -> None:
    method = "DELETE" if path == "/api/delete" else "POST"
    message = refused(client, method, path, body.encode())
    assert needle in message


# /v1/audio/transcriptions takes a multipart form: (form fields, the file, the message).
TRANSCRIPTION_CASES = [
    ({"model": "tiny"}, sound(440), "tiny does not support audio"),
    ({"model": "tiny"}, png(1), "file is an image, not a sound"),
    ({"model": "tiny"}, b"\x00junk", "not an image or sound"),
    ({"model": "tiny"}, b"", "file is empty"),
    ({"model": "tiny"}, None, "missing field 'file'"),
    ({}, sound(440), "missing field 'model'"),
    ({"model": ""}, sound(440), "model"),
    ({"model": "nothere"}, sound(440), "not found"),
    ({"model": "tiny", "response_format": "srt"}, sound(440), "srt needs timestamps"),
    ({"model": "tiny", "response_format": "xml"}, sound(440), "response_format"),
    ({"model": "tiny", "temperature": "NaN"}, sound(440), "temperature"),
    ({"model": "tiny", "temperature": "hot"}, sound(440), "temperature"),
    ({"model": "tiny", "max_tokens": "-1"}, sound(440), "max_tokens"),
    ({"model": "tiny", "max_tokens": "1e400"}, sound(440), "max_tokens"),
    ({"model": "tiny", "stream": "true"}, sound(440), "not supported"),
    ({"model": "tiny", "stream": "maybe"}, sound(440), "stream"),
] + [({"model": name}, sound(440), "invalid model name") for name in HOSTILE_NAMES if name.strip()]


@pytest.mark.parametrize(
    ("form", "data", "needle"), TRANSCRIPTION_CASES, ids=lambda v: repr(v)[:40]
)
def test_bad_transcriptions(
    client: httpx.Client, unchanged: None, form: dict[str, str], data: bytes | None, needle: str
) -> None:
    path = "/v1/audio/transcriptions"
    files = {"file": ("sound.wav", data)} if data is not None else None
    response = client.post(path, data=form, files=files)
    if needle == "not found":
        assert response.status_code == 404, response.text
    else:
        assert response.status_code == 400, response.text
    assert needle in error_message(path, response)


@pytest.mark.parametrize(("body", "content_type", "needle"), BAD_BODIES[:8])
def test_transcriptions_take_a_form_not_json(
    client: httpx.Client, unchanged: None, body: bytes, content_type: str, needle: str
) -> None:
    message = refused(client, "POST", "/v1/audio/transcriptions", body, content_type=content_type)
    assert "missing field" in message


def test_an_empty_message_list_loads_the_model_as_in_ollama(
    client: httpx.Client, unchanged: None
) -> None:
    """Not an error on /api/chat (Ollama's way to preload a model); it is on /v1."""
    answer = client.post("/api/chat", json={"model": "tiny", "messages": [], "stream": False})
    assert answer.status_code == 200, answer.text
    assert answer.json()["done_reason"] == "load"


@pytest.mark.parametrize("keep_alive", ["1e308", "Infinity", '"99999999999999h"'])
def test_a_keep_alive_beyond_any_lifetime_means_forever(
    client: httpx.Client, unchanged: None, keep_alive: str
) -> None:
    """Once a 500 from /api/ps: the expiry overflowed the wall clock."""
    body = (
        GENERATE % f'"stream": false, "options": {{"num_predict": 1}}, "keep_alive": {keep_alive}'
    )
    answer = client.post("/api/generate", content=body.encode(), headers=JSON)
    assert answer.status_code == 200, answer.text
    running = client.get("/api/ps")
    assert running.status_code == 200, running.text
    assert running.json()["models"][0]["expires_at"].startswith("9999-")


def test_a_default_keep_alive_beyond_any_lifetime(
    isolated_home: Path, tiny_gguf_path: Path
) -> None:
    env = {"LOCALSERVE_KEEP_ALIVE": "99999999999h"}
    with running_daemon(isolated_home, tiny_gguf_path, env=env) as started:
        body = {"model": "tiny", "prompt": "hi", "stream": False, "options": {"num_predict": 1}}
        answer = httpx.post(f"{started.url}/api/generate", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        running = httpx.get(f"{started.url}/api/ps", timeout=30)
        assert running.status_code == 200, running.text
        assert running.json()["models"][0]["expires_at"].startswith("9999-")


# ------------------------------------------------------------------ any path, any size


def test_unknown_paths_and_methods(client: httpx.Client, unchanged: None) -> None:
    assert "Not Found" in refused(client, "GET", "/api/nothing", status=404)
    assert "Not Found" in refused(client, "GET", "/v1/nothing", status=404)
    assert "Not Found" in refused(client, "GET", "/../../etc/passwd", status=404)
    assert "Method Not Allowed" in refused(client, "GET", "/api/chat", status=405)
    assert "Method Not Allowed" in refused(client, "PUT", "/api/generate", b"{}", status=405)
    assert "Method Not Allowed" in refused(client, "POST", "/v1/models", b"{}", status=405)
    assert "Method Not Allowed" in refused(client, "DELETE", "/v1/chat/completions", status=405)
    assert "Method Not Allowed" in refused(client, "GET", "/v1/messages", status=405)
    for path in ("/", "/health", "/metrics", "/api/version", "/api/tags", "/api/ps", "/v1/models"):
        assert "Method Not Allowed" in refused(client, "POST", path, b"{}", status=405)
        # Query strings and bodies that nothing reads change nothing.
        answer = client.request("GET", f"{path}?model=../x&x={'a' * 5000}", content=b"\x00junk")
        assert answer.status_code == 200, (path, answer.text)
    # Python's `$` matches before a final newline: without the guard's check these would
    # answer as /api/tags and as the model "tiny".
    assert "control characters" in refused(client, "GET", "/api/tags%0A")
    assert "control characters" in refused(client, "GET", "/v1/models/tiny%0A")
    assert "control characters" in refused(client, "POST", "/api/show%00", b'{"model": "tiny"}')


def high_water_mark(pid: int) -> int:
    """The daemon's peak resident memory so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions", "/v1/messages"])
def test_64_mb_bodies_are_refused_unread(
    client: httpx.Client, daemon: Daemon, unchanged: None, path: str
) -> None:
    size = 64 << 20
    big = b'{"model": "tiny", "prompt": "' + b"a" * size + b'"}'

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        for start in range(0, len(big), 1 << 20):
            yield big[start : start + (1 << 20)]

    peak = high_water_mark(daemon.pid)
    declared = client.post(path, content=big, headers=JSON)
    streamed = client.post(path, content=chunks(), headers=JSON)
    for response in (declared, streamed):
        assert response.status_code == 413, response.text
        assert f"{MAX_BODY >> 20} MiB" in error_message(path, response)
        if path == "/v1/messages":
            assert response.json()["error"]["type"] == "request_too_large"
    # At most the MAX_BODY allowed was held, never the whole 64 MiB.
    assert high_water_mark(daemon.pid) - peak < MAX_BODY + (16 << 20)


# ------------------------------------------------------------------ the CLI


@pytest.fixture
def cli_env(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> Daemon:
    """Commands on the daemon's own store and address (so `run` and `stop` reach it)."""
    monkeypatch.setenv("LOCALSERVE_HOME", str(daemon.home))
    monkeypatch.setenv("LOCALSERVE_HOST", f"127.0.0.1:{daemon.port}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return daemon


def run_cli(*args: str) -> tuple[int, str, str]:
    """``localserve ARGS`` in-process through its real entry point and error edge
    (a process each would take a second; the subprocess cases below cover that)."""
    out, err = io.StringIO(), io.StringIO()
    argv, stdin = sys.argv, sys.stdin
    sys.argv, sys.stdin = ["localserve", *args], io.StringIO("")  # nothing piped in
    try:
        with (
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
            pytest.raises(SystemExit) as exited,
        ):
            main()
    finally:
        sys.argv, sys.stdin = argv, stdin
    code = exited.value.code
    return (code if isinstance(code, int) else 1), out.getvalue(), err.getvalue()


def assert_one_error_line(code: int, expected: int, out: str, err: str) -> str:
    shown = f"exit {code}, stdout {out!r:.200}, stderr {err!r:.500}"
    assert code == expected, shown
    assert out == "", shown
    assert "Traceback" not in err, shown
    lines = err.splitlines()
    assert lines[0].startswith("Error: "), shown
    assert len(lines) <= 2 and all(line.startswith("  ") for line in lines[1:]), shown  # a hint
    return lines[0]


def name_commands(name: str, model_file: Path) -> list[list[str]]:
    """Every command that takes a model name, with ``name`` in each place a name goes."""
    return [
        ["pull", name],
        ["show", name],
        ["rm", name],
        ["cp", name, "copied"],
        ["cp", "tiny", name],
        ["plan", name],
        ["run", name, "hi"],
        ["stop", name],
        ["import", str(model_file), name],
    ]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_cli_refuses_hostile_names(
    cli_env: Daemon, unchanged: None, tiny_gguf_path: Path, name: str
) -> None:
    for args in name_commands(name, tiny_gguf_path):
        code, out, err = run_cli(*args)
        line = assert_one_error_line(code, 2, out, err)
        assert "invalid model name" in line, args


def test_cli_absent_models_are_not_found(cli_env: Daemon, unchanged: None) -> None:
    for args in (["show", "nothere"], ["rm", "nothere"], ["cp", "nothere", "x"], ["plan", "nothere"], ["run", "nothere", "hi"], ["stop", "nothere"]):  # fmt: skip
        code, out, err = run_cli(*args)
        assert "not found" in assert_one_error_line(code, 3, out, err), args


@pytest.mark.parametrize(
    ("args", "expected", "needle"),
    [
        (["import", "/dev/zero", "x"], 2, "not a regular file"),
        (["import", "/tmp", "x"], 2, "not a regular file"),
        (["import", "/nonexistent/model.gguf", "x"], 2, "no such file"),
        (["import", "/etc/passwd", "x"], 5, "not a valid GGUF"),
        (["run", "tiny", "-o", "num_predict=nan", "hi"], 2, "num_predict"),
        (["run", "tiny", "-o", "num_ctx=1e400", "hi"], 2, "num_ctx"),
        (["run", "tiny", "-o", "temperature=-inf", "hi"], 2, "temperature"),
        (["run", "tiny", "-o", "seed=99999999999999999999999", "hi"], 2, "seed"),
        (["run", "tiny", "-o", "num_batch=1", "hi"], 2, "num_batch"),
        (["run", "tiny", "-o", "bogus=1", "hi"], 2, "unknown option"),
        (["run", "tiny", "-o", "noequals", "hi"], 2, "invalid option"),
        (["run", "tiny", "--keepalive", "nan", "hi"], 2, "duration"),
        (["run", "tiny", "--format", "xml", "hi"], 2, "format"),
        (["run", "tiny", LONG_PROMPT], 2, "context"),
        (["plan", "tiny", "--gpu-memory", "inf"], 2, "size"),
        (["plan", "tiny", "--gpu-memory", "99999999999999999999999TB"], 2, "too large"),
    ],
    ids=lambda v: " ".join(v)[:50] if isinstance(v, list) else str(v),
)
def test_cli_refuses_bad_values(
    cli_env: Daemon, unchanged: None, args: list[str], expected: int, needle: str
) -> None:
    code, out, err = run_cli(*args)
    assert needle in assert_one_error_line(code, expected, out, err)


@pytest.mark.parametrize(
    "args",
    [
        ["plan", "tiny", "--ctx", "-5"],
        ["plan", "tiny", "--parallel", "nan"],
        ["pull", "a/b", "--connections", "100"],
    ],
)
def test_cli_usage_errors(cli_env: Daemon, unchanged: None, args: list[str]) -> None:
    """Option types and ranges are click's to check: its usage message, exit 2."""
    code, out, err = run_cli(*args)
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.splitlines()[-1].startswith("Error: Invalid value for")


@pytest.mark.parametrize(
    "args",
    [
        ["pull", "file:///etc/passwd"],
        ["cp", "tiny", "../../etc/x"],
        ["run", "http://169.254.169.254/latest", "hi"],
        ["stop", "a" * 5000],
    ],
    ids=lambda v: v[0],
)
def test_cli_as_a_process(cli_env: Daemon, unchanged: None, args: list[str]) -> None:
    result = cli(*args)
    line = assert_one_error_line(result.returncode, 2, result.stdout, result.stderr)
    assert "invalid model name" in line
