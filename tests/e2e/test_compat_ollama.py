"""The official ``ollama`` Python client against a real daemon (tests/support/daemon.py).

The client is the judge of the wire shapes: every call here goes through its own
request and response models. Raw httpx checks cover what the client hides
(content types, timestamps, errors inside a stream, curl-style bodies).
The model is the tiny random one: its text is gibberish, so the checks are about
shapes, counts and reasons, never about words.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import ollama
import pytest
from pydantic import BaseModel

from tests.support.daemon import Daemon, daemon, tool_models
from tests.support.json_prefix import is_json_prefix

__all__ = ["daemon", "tool_models"]  # the module-scoped fixture, imported to be used here

MODEL = "tiny"
FULL_NAME = "tiny:latest"
RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
GREEDY = {"temperature": 0}


@pytest.fixture
def client(daemon: Daemon) -> Iterator[ollama.Client]:
    with ollama.Client(host=daemon.url, timeout=60) as client:
        yield client


def assert_final_timings(done: ollama.GenerateResponse | ollama.ChatResponse) -> None:
    assert done.done is True
    assert done.total_duration and done.eval_duration and done.prompt_eval_duration
    assert done.prompt_eval_count and done.prompt_eval_count > 0
    assert done.total_duration > done.eval_duration > 0
    assert done.total_duration > done.prompt_eval_duration > 0
    assert done.load_duration is not None and done.load_duration >= 0


# ------------------------------------------------------------------ basics


def test_root_answers_get_and_head(daemon: Daemon) -> None:
    got = httpx.get(daemon.url + "/")
    assert got.status_code == 200 and got.text == "localserve is running"
    for path in ("/", "/api/version", "/api/tags"):
        assert httpx.head(daemon.url + path).status_code == 200, path
    version = httpx.get(daemon.url + "/api/version").json()["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", version)


def test_list_shows_the_model_with_its_details(client: ollama.Client) -> None:
    models = {m.model: m for m in client.list().models}
    tiny = models[FULL_NAME]
    assert tiny.digest and re.fullmatch(r"[0-9a-f]{64}", tiny.digest)
    assert tiny.size and tiny.size > 0
    assert tiny.modified_at is not None and tiny.modified_at.tzinfo is not None
    assert tiny.details is not None
    assert tiny.details.format == "gguf"
    assert tiny.details.family == "llama"
    assert tiny.details.families == ["llama"]
    assert tiny.details.quantization_level == "F32"
    assert tiny.details.parameter_size and re.fullmatch(
        r"\d+(\.\d+)?[KMBT]", tiny.details.parameter_size
    )


def test_show_gives_details_model_info_and_template(client: ollama.Client) -> None:
    shown = client.show(MODEL)
    assert shown.details is not None and shown.details.family == "llama"
    assert shown.modelinfo is not None
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.modelinfo["llama.context_length"] == 2048
    assert "llama.embedding_length" in shown.modelinfo
    assert shown.template and "<|im_start|>" in shown.template
    assert shown.modelfile and "FROM" in shown.modelfile
    assert shown.capabilities and "completion" in shown.capabilities
    assert shown.modified_at is not None


# -------------------------------------------------------------- generation


def test_generate_not_streamed(client: ollama.Client) -> None:
    started = time.perf_counter_ns()
    result = client.generate(MODEL, "Hello", options={"num_predict": 16, **GREEDY})
    wall_ns = time.perf_counter_ns() - started
    assert result.response
    assert result.done_reason == "length"
    assert result.eval_count == 16
    assert_final_timings(result)
    # Nanoseconds: within the request's wall time, and not a thousand times smaller.
    assert result.total_duration is not None
    assert wall_ns / 200 < result.total_duration <= wall_ns
    assert result.created_at and RFC3339_Z.match(result.created_at)


def test_generate_streamed_matches_the_whole_answer(client: ollama.Client) -> None:
    options = {"num_predict": 12, **GREEDY}
    chunks = list(client.generate(MODEL, "Hello", options=options, stream=True))
    *pieces, last = chunks
    assert pieces and all(c.done is False and c.done_reason is None for c in pieces)
    assert last.done_reason == "length" and last.eval_count == 12
    assert_final_timings(last)
    streamed = "".join(c.response or "" for c in chunks)
    whole = client.generate(MODEL, "Hello", options=options)
    assert streamed and streamed == whole.response


def test_chat_not_streamed(client: ollama.Client) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    result = client.chat(MODEL, messages, options={"num_predict": 8, **GREEDY})
    assert result.message.role == "assistant"
    assert result.message.content
    assert result.done_reason == "length" and result.eval_count == 8
    assert_final_timings(result)


def test_chat_streamed(client: ollama.Client) -> None:
    chunks = list(
        client.chat(
            MODEL,
            [{"role": "user", "content": "Hi!"}],
            options={"num_predict": 8, **GREEDY},
            stream=True,
        )
    )
    assert all(c.message.role == "assistant" for c in chunks)
    assert [c.done for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert "".join(c.message.content or "" for c in chunks)
    assert chunks[-1].done_reason == "length" and chunks[-1].eval_count == 8


def test_chat_with_history_and_tools(debug_daemon: Daemon) -> None:
    def add(a: int, b: int) -> int:
        """Add two numbers.

        Args:
          a: the first number
          b: the second number
        """
        return a + b

    messages = [
        {"role": "user", "content": "What is 1 + 2? (ollama-history)"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "add", "arguments": {"a": 1, "b": 2}}}],
        },
        {"role": "tool", "content": "the sum is 3", "tool_name": "add"},
    ]
    with ollama.Client(host=debug_daemon.url, timeout=60) as client:
        result = client.chat(
            "tiny-tools", messages, tools=[add], options={"num_predict": 4, **GREEDY}
        )
        assert result.message.role == "assistant" and result.done
        assert result.eval_count == 4 and result.done_reason == "length"

        # A model whose template has no tools refuses them, as Ollama does.
        with pytest.raises(ollama.ResponseError, match="tiny does not support tools") as refused:
            client.chat(MODEL, messages, tools=[add])
        assert refused.value.status_code == 400

    # The history went through the template: the tool's signature, the call with its
    # arguments as an object, and the result, each where the template puts it.
    prompt = debug_daemon.logged_prompt("(ollama-history)")
    assert "<tools>\n" in prompt and '"name": "add"' in prompt and "the first number" in prompt
    call = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
    result_turn = "<|im_start|>user\n<tool_response>\nthe sum is 3\n</tool_response><|im_end|>"
    assert prompt.index("(ollama-history)") < prompt.index(call) < prompt.index(result_turn)
    assert prompt.endswith(result_turn + "\n<|im_start|>assistant\n"), prompt


def test_the_debug_log_shortens_long_prompts(debug_daemon: Daemon) -> None:
    # A long prompt is logged by its start and its end: one line of a readable size
    # (the daemon reads its runners' log a line at a time, up to 1 MiB).
    words = " ".join(["water"] * 2000)
    with ollama.Client(host=debug_daemon.url, timeout=60) as client:
        client.generate(MODEL, f"(long-start) {words} (long-end)", options={"num_predict": 1})
    prompt = debug_daemon.logged_prompt("(long-start)")
    assert prompt.endswith("(long-end)<|im_end|>\n<|im_start|>assistant\n"), prompt[-200:]
    assert len(prompt) < 8100 and "characters ...]" in prompt


def test_thinking_is_split_from_the_answer(
    client: ollama.Client, tool_models: dict[str, str]
) -> None:
    # tiny-r1's prompt opens a <think> block: a random model never closes it, so its
    # whole answer is reasoning.
    question = [{"role": "user", "content": "Why?"}]
    options = {"num_predict": 12, **GREEDY}
    result = client.chat("tiny-r1", question, think=True, options=options)
    assert result.message.thinking and result.message.content == ""
    streamed = list(client.chat("tiny-r1", question, think=True, options=options, stream=True))
    assert "".join(c.message.thinking or "" for c in streamed) == result.message.thinking
    assert all(not c.message.content for c in streamed)
    # Thinking off, where the template has no switch (R1's prompt opens the block all the
    # same): a zero thinking budget closes the block at once, and what the model writes
    # after it is the answer (docs/api.md, Thinking budget).
    hidden = client.chat("tiny-r1", question, think=False, options=options)
    assert hidden.message.thinking is None and hidden.message.content
    assert "</think>" not in hidden.message.content
    generated = client.generate("tiny-r1", "Why?", think=True, options=options)
    assert generated.thinking == result.message.thinking and generated.response == ""

    with pytest.raises(ollama.ResponseError, match="tiny does not support thinking") as refused:
        client.chat(MODEL, question, think=True)
    assert refused.value.status_code == 400
    with pytest.raises(ollama.ResponseError, match="think must be"):
        client.chat("tiny-r1", question, think="extreme")  # type: ignore[arg-type]


class Answer(BaseModel):
    ok: bool


def test_format_json_schema_output_parses(client: ollama.Client) -> None:
    result = client.generate(
        MODEL,
        "Is the sky blue? Answer in JSON.",
        format=Answer.model_json_schema(),
        options={"num_predict": 200, **GREEDY},
    )
    # This schema's grammar admits only short texts: the answer must end within 200 tokens.
    assert result.done_reason == "stop"
    assert isinstance(Answer.model_validate_json(result.response or "").ok, bool)


def test_format_json_output_parses(client: ollama.Client) -> None:
    result = client.chat(
        MODEL,
        [{"role": "user", "content": "Reply in JSON."}],
        format="json",
        options={"num_predict": 400, **GREEDY},
    )
    content = result.message.content or ""
    assert content.lstrip().startswith("{")
    if result.done_reason == "stop":
        assert isinstance(json.loads(content, strict=False), dict)
    else:  # cut off by num_predict: still the beginning of a JSON object
        assert result.done_reason == "length" and is_json_prefix(content), content


def test_async_client_streams(daemon: Daemon) -> None:
    async def body() -> tuple[list[ollama.GenerateResponse], list[ollama.ChatResponse]]:
        async with ollama.AsyncClient(host=daemon.url, timeout=60) as client:
            options = {"num_predict": 6, **GREEDY}
            generated = [
                c async for c in await client.generate(MODEL, "Hi", options=options, stream=True)
            ]
            messages = [{"role": "user", "content": "Hi"}]
            chatted = [
                c async for c in await client.chat(MODEL, messages, options=options, stream=True)
            ]
        return generated, chatted

    generated, chatted = asyncio.run(body())
    assert generated[-1].done and generated[-1].eval_count == 6
    assert "".join(c.response or "" for c in generated)
    assert chatted[-1].done and chatted[-1].message.role == "assistant"


# ------------------------------------------------------- load, unload, ps


def test_ps_lists_a_loaded_model(client: ollama.Client) -> None:
    client.generate(MODEL, "Hi", options={"num_predict": 1}, keep_alive="10m")
    running = {m.model: m for m in client.ps().models}
    tiny = running[FULL_NAME]
    assert tiny.name == FULL_NAME
    listed = {m.model: m for m in client.list().models}
    assert tiny.digest == listed[FULL_NAME].digest
    assert tiny.expires_at is not None
    now = datetime.now(UTC)
    assert now + timedelta(minutes=9) < tiny.expires_at <= now + timedelta(minutes=10, seconds=5)
    assert tiny.context_length and tiny.context_length > 0
    assert tiny.size and tiny.size > 0
    assert tiny.size_vram is not None
    assert tiny.details is not None and tiny.details.family == "llama"


def test_empty_prompt_loads_and_keep_alive_zero_unloads(client: ollama.Client) -> None:
    loaded = client.generate(MODEL)
    assert loaded.done and loaded.done_reason == "load" and loaded.response == ""
    assert FULL_NAME in [m.model for m in client.ps().models]

    unloaded = client.generate(MODEL, keep_alive=0)
    assert unloaded.done and unloaded.done_reason == "unload"
    assert FULL_NAME not in [m.model for m in client.ps().models]

    chat_loaded = client.chat(MODEL, [])
    assert chat_loaded.done_reason == "load" and chat_loaded.message.role == "assistant"
    assert FULL_NAME in [m.model for m in client.ps().models]


def test_keep_alive_forms(client: ollama.Client) -> None:
    for keep_alive in ("5m", 30, 1.5, -1):
        result = client.generate(MODEL, "Hi", options={"num_predict": 1}, keep_alive=keep_alive)
        assert result.done
    (tiny,) = [m for m in client.ps().models if m.model == FULL_NAME]
    assert tiny.expires_at is not None and tiny.expires_at.year >= 9999  # -1: forever
    client.generate(MODEL, keep_alive="5m")


# ------------------------------------------------------- copy and delete


def test_copy_then_delete(client: ollama.Client) -> None:
    assert client.copy(MODEL, "tiny-copy").status == "success"
    listed = {m.model: m for m in client.list().models}
    assert listed["tiny-copy:latest"].digest == listed[FULL_NAME].digest

    assert client.delete("tiny-copy").status == "success"
    assert "tiny-copy:latest" not in [m.model for m in client.list().models]
    assert FULL_NAME in [m.model for m in client.list().models]
    with pytest.raises(ollama.ResponseError) as excinfo:
        client.delete("tiny-copy")
    assert excinfo.value.status_code == 404


# -------------------------------------------------------------- embeddings


def test_embed_gives_unit_vectors(client: ollama.Client) -> None:
    result = client.embed(MODEL, ["first text", "second text"])
    assert len(result.embeddings) == 2
    first, second = result.embeddings
    assert len(first) == len(second) > 0
    for vector in result.embeddings:
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, abs_tol=1e-4)
    assert list(first) != list(second)
    assert result.prompt_eval_count and result.prompt_eval_count > 0

    single = client.embed(MODEL, "first text")
    assert len(single.embeddings) == 1
    assert all(
        math.isclose(a, b, abs_tol=1e-5) for a, b in zip(single.embeddings[0], first, strict=True)
    )


def test_concurrent_embeds_get_their_own_vectors(client: ollama.Client, daemon: Daemon) -> None:
    """Eight requests at once: their inputs share decodes (engine/pooled.py), and each
    gets back the vectors of its own inputs, in its order, as it would alone."""
    texts = [[f"text {i} part {j}" for j in range(1 + i % 3)] for i in range(8)]
    alone = [client.embed(MODEL, group).embeddings for group in texts]

    async def together() -> list[list[list[float]]]:
        async with ollama.AsyncClient(host=daemon.url, timeout=120) as many:
            answers = await asyncio.gather(*(many.embed(MODEL, group) for group in texts))
        return [list(map(list, a.embeddings)) for a in answers]

    for got, expected in zip(asyncio.run(together()), alone, strict=True):
        assert len(got) == len(expected)
        for vector, reference in zip(got, expected, strict=True):
            assert vector == pytest.approx(list(reference), abs=1e-4)


def test_embed_without_input_only_loads(client: ollama.Client) -> None:
    client.generate(MODEL, keep_alive=0)
    for result in (client.embed(MODEL), client.embed(MODEL, [])):  # the client sends input ""
        assert result.embeddings == []
    assert FULL_NAME in [m.model for m in client.ps().models]


def test_legacy_embeddings(client: ollama.Client) -> None:
    legacy = client.embeddings(MODEL, "first text").embedding
    current = client.embed(MODEL, "first text").embeddings[0]
    assert len(legacy) == len(current) > 0
    assert all(math.isclose(a, b, abs_tol=1e-5) for a, b in zip(legacy, current, strict=True))


# ------------------------------------------------------------------ errors


def test_missing_model_is_404(client: ollama.Client) -> None:
    calls = [
        lambda: client.generate("no-such-model", "Hi"),
        lambda: list(client.generate("no-such-model", "Hi", stream=True)),
        lambda: client.chat("no-such-model", [{"role": "user", "content": "Hi"}]),
        lambda: client.show("no-such-model"),
        lambda: client.embed("no-such-model", "Hi"),
    ]
    for call in calls:
        with pytest.raises(ollama.ResponseError) as excinfo:
            call()
        assert excinfo.value.status_code == 404
        assert "not found" in excinfo.value.error


def test_a_prompt_over_the_context_names_both_numbers(client: ollama.Client) -> None:
    """A 400 whose error says how long the prompt is and what the context holds."""
    long = "many words " * 200
    calls = [
        lambda: client.generate(MODEL, long, options={"num_ctx": 64}),
        lambda: list(client.generate(MODEL, long, options={"num_ctx": 64}, stream=True)),
        lambda: client.chat(MODEL, [{"role": "user", "content": long}], options={"num_ctx": 64}),
    ]
    for call in calls:
        with pytest.raises(ollama.ResponseError) as caught:
            call()
        assert caught.value.status_code == 400
        found = re.search(r"is (\d+) tokens, but the context holds (\d+)", caught.value.error)
        assert found is not None, caught.value.error
        assert int(found[2]) == 64 < int(found[1])


@pytest.mark.parametrize(
    "options",
    [{"temperature": "hot"}, {"num_predict": "many"}, {"temprature": 0.5}, {"num_ctx": 1.5}],
    ids=["bad-type", "bad-int", "unknown", "bad-load-option"],
)
def test_invalid_options_are_400(client: ollama.Client, options: dict[str, object]) -> None:
    with pytest.raises(ollama.ResponseError) as excinfo:
        client.generate(MODEL, "Hi", options=options)
    assert excinfo.value.status_code == 400
    with pytest.raises(ollama.ResponseError) as excinfo:
        list(client.chat(MODEL, [{"role": "user", "content": "Hi"}], options=options, stream=True))
    assert excinfo.value.status_code == 400


def test_pull_of_a_local_name_is_400(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as excinfo:
        client.pull(MODEL)
    assert excinfo.value.status_code == 400
    with pytest.raises(ollama.ResponseError) as excinfo:
        list(client.pull(MODEL, stream=True))
    assert excinfo.value.status_code == 400


def test_bad_bodies_are_400_with_an_error_field(daemon: Daemon) -> None:
    bodies = [
        b'{"model": "tiny", "prompt": ',  # not JSON
        b'{"prompt": "Hi"}',  # no model
        b'{"model": "tiny", "prompt": 5}',
        b"[1, 2]",
    ]
    for body in bodies:
        response = httpx.post(
            daemon.url + "/api/generate",
            content=body,
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 400, body
        assert isinstance(response.json()["error"], str)


# --------------------------------------------------- what the client hides


def test_streams_are_ndjson_with_rfc3339_timestamps(daemon: Daemon) -> None:
    requests = [
        ("/api/generate", {"model": MODEL, "prompt": "Hi", "options": {"num_predict": 4}}),
        (
            "/api/chat",
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": "Hi"}],
                "options": {"num_predict": 4},
            },
        ),
    ]
    for path, body in requests:
        with httpx.stream("POST", daemon.url + path, json=body, timeout=60) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].split(";")[0] == "application/x-ndjson"
            lines = [json.loads(line) for line in response.iter_lines() if line]
        assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
        for line in lines:
            assert RFC3339_Z.match(line["created_at"]), line["created_at"]
            assert line["model"] == MODEL
        assert isinstance(lines[-1]["total_duration"], int)

    whole = httpx.post(
        daemon.url + "/api/generate",
        json={"model": MODEL, "prompt": "Hi", "stream": False, "options": {"num_predict": 2}},
        timeout=60,
    )
    assert whole.headers["content-type"].split(";")[0] == "application/json"
    assert whole.json()["done"] is True


def test_curl_style_form_body_is_read_as_json(daemon: Daemon) -> None:
    # `curl -d '{...}'` labels the JSON as a form, and Ollama's users rely on it.
    body = json.dumps(
        {"model": MODEL, "prompt": "Hi", "stream": False, "options": {"num_predict": 2}}
    )
    response = httpx.post(
        daemon.url + "/api/generate",
        content=body.encode(),
        headers={"content-type": "application/x-www-form-urlencoded"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.json()["eval_count"] == 2
    tags = httpx.post(
        daemon.url + "/api/show",
        content=json.dumps({"model": MODEL}).encode(),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert tags.status_code == 200 and tags.json()["details"]["family"] == "llama"


def test_null_fields_mean_the_default(daemon: Daemon) -> None:
    # Ollama's Go decoder treats null as absent; clients that serialise every field rely on it.
    nulls = {"stream": None, "raw": None, "format": None, "keep_alive": None, "think": None}
    generated = httpx.post(
        daemon.url + "/api/generate",
        json={"model": MODEL, "prompt": "Hi", "options": {"num_predict": 2}, **nulls},
        timeout=60,
    )
    assert generated.status_code == 200, generated.text
    assert generated.headers["content-type"].startswith("application/x-ndjson")  # streamed
    chat = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hi", "images": None, "tool_calls": None}],
        "stream": False,
        "options": {"num_predict": 2},
        "tools": None,
    }
    chatted = httpx.post(daemon.url + "/api/chat", json=chat, timeout=60)
    assert chatted.status_code == 200, chatted.text
    assert chatted.json()["done"] is True
    embedded = httpx.post(
        daemon.url + "/api/embed",
        json={"model": MODEL, "input": "Hi", "truncate": None, "dimensions": None},
        timeout=60,
    )
    assert embedded.status_code == 200 and len(embedded.json()["embeddings"]) == 1


def kill_runner_after_first_line(daemon: Daemon, path: str, body: dict[str, object]) -> list[str]:
    """Stream ``body`` to ``path``; once the first line is in, SIGKILL the model's runner.
    Returns every non-empty line of the stream."""
    with httpx.stream("POST", daemon.url + path, json=body, timeout=60) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        first = next(line for line in lines if line)
        assert daemon.kill_runners(), "no runner process under the daemon"
        return [first, *(line for line in lines if line)]


def test_a_runner_crash_mid_stream_ends_with_an_error_line(
    daemon: Daemon, client: ollama.Client
) -> None:
    client.generate(MODEL)  # load first: the kill needs a runner
    before = set(daemon.children())
    options = {"num_predict": 100000}
    body = {"model": MODEL, "prompt": "Once", "options": options}
    lines: list[str] = []
    for _ in range(3):  # the tiny model is fast: a run may end before the kill lands
        lines = kill_runner_after_first_line(daemon, "/api/generate", body)
        if "error" in json.loads(lines[-1]):
            break
    last = json.loads(lines[-1])
    assert set(last) == {"error"} and "runner" in last["error"], last
    assert all(not json.loads(line).get("done") for line in lines[:-1])

    # The ollama client turns that line into a ResponseError.
    raised: ollama.ResponseError | None = None
    for _ in range(3):
        try:
            for _chunk in client.generate(MODEL, "Once", options=options, stream=True):
                daemon.kill_runners()
        except ollama.ResponseError as exc:
            raised = exc
            break
    assert raised is not None and "runner" in raised.error

    # The next request gets a fresh runner.
    result = client.generate(MODEL, "Hi", options={"num_predict": 3})
    assert result.done_reason == "length" and result.eval_count == 3
    assert daemon.children() and set(daemon.children()).isdisjoint(before)


def test_show_capabilities_come_from_the_template(
    client: ollama.Client, tool_models: dict[str, str]
) -> None:
    assert client.show(MODEL).capabilities == ["completion", "embedding"]
    assert client.show("tiny-tools").capabilities == [
        "completion",
        "tools",
        "thinking",
        "embedding",
    ]
    assert client.show("tiny-r1").capabilities == ["completion", "thinking", "embedding"]


def test_logprobs(client: ollama.Client) -> None:
    options = {"num_predict": 6, **GREEDY}
    result = client.generate(MODEL, "Hello", options=options, logprobs=True, top_logprobs=3)
    entries = result.logprobs or []
    assert len(entries) == 6
    assert "".join(e.token for e in entries) == result.response
    for entry in entries:
        top = entry.top_logprobs or []
        assert len(top) == 3 and top[0].token == entry.token  # greedy: the likeliest
        assert entry.logprob == pytest.approx(top[0].logprob) and entry.logprob <= 0

    chunks = list(
        client.chat(
            MODEL, [{"role": "user", "content": "Hi"}], options=options, logprobs=True, stream=True
        )
    )
    streamed = [e for c in chunks for e in c.logprobs or []]
    assert len(streamed) == 6
    assert "".join(e.token for e in streamed) == "".join(c.message.content for c in chunks)
    assert all(not e.top_logprobs for e in streamed)  # none asked for

    plain = client.generate(MODEL, "Hello", options=options)
    assert plain.logprobs is None  # only when asked
