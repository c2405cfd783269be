"""The official ``openai`` SDK against a real daemon's /v1 routes (tests/support/daemon.py).

The SDK is the judge: its response models parse every answer. Raw httpx checks
cover the SSE framing it hides. The model is the tiny random one, so checks are
about shapes, counts and reasons, never about words.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator

import httpx
import openai
import pytest
from pydantic import BaseModel

from tests.support.daemon import Daemon, daemon, tool_models
from tests.support.json_prefix import is_json_prefix

__all__ = ["daemon", "tool_models"]  # the module-scoped fixture, imported to be used here

MODEL = "tiny"
FULL_NAME = "tiny:latest"
USER = [{"role": "user", "content": "Hello!"}]


@pytest.fixture
def client(daemon: Daemon) -> Iterator[openai.OpenAI]:
    # No retries: a 5xx must show up as the error it is, not as a slow pass.
    with openai.OpenAI(
        base_url=daemon.url + "/v1", api_key="unused", max_retries=0, timeout=60
    ) as client:
        yield client


def running_context_length(daemon: Daemon) -> int:
    models = httpx.get(daemon.url + "/api/ps").json()["models"]
    (tiny,) = [m for m in models if m["name"] == FULL_NAME]
    return int(tiny["context_length"])


# ------------------------------------------------------------------ models


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    tiny = models[FULL_NAME]
    assert tiny.object == "model" and tiny.owned_by == "localserve" and tiny.created > 0
    assert client.models.retrieve(FULL_NAME).id == FULL_NAME
    assert client.models.retrieve(MODEL).id == FULL_NAME
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


# -------------------------------------------------------- chat completions


def test_chat_completion(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=8, temperature=0
    )
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    (choice,) = completion.choices
    assert choice.index == 0
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 8
    assert completion.usage.prompt_tokens > 0
    assert completion.usage.total_tokens == 8 + completion.usage.prompt_tokens


def test_chat_completion_streamed(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=USER, max_tokens=6, temperature=0, stream=True
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks] == [None] * (len(chunks) - 1) + ["length"]
    assert all(c.usage is None for c in chunks)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    whole = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=6, temperature=0)
    assert streamed and streamed == whole.choices[0].message.content


def test_stream_options_include_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=USER,
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    *content, usage_chunk = chunks
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None and usage_chunk.usage.completion_tokens == 5
    assert usage_chunk.usage.prompt_tokens > 0
    assert content[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in content)


def test_sse_framing_ends_with_done(daemon: Daemon) -> None:
    for path, body in [
        ("/v1/chat/completions", {"model": MODEL, "messages": USER}),
        ("/v1/completions", {"model": MODEL, "prompt": "Hello"}),
    ]:
        with httpx.stream(
            "POST",
            daemon.url + path,
            json={**body, "max_tokens": 3, "stream": True},
            timeout=60,
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].split(";")[0] == "text/event-stream"
            text = response.read().decode()
        events = [e for e in text.split("\n\n") if e]
        assert all(e.startswith("data: ") for e in events)
        assert events[-1] == "data: [DONE]"
        assert text.endswith("data: [DONE]\n\n")
        for event in events[:-1]:
            json.loads(event.removeprefix("data: "))


def test_null_fields_mean_the_default(daemon: Daemon) -> None:
    nulls = {
        "stream": None,
        "stream_options": None,
        "n": None,
        "temperature": None,
        "top_p": None,
        "seed": None,
        "stop": None,
        "response_format": None,
        "tools": None,
        "user": None,
    }
    response = httpx.post(
        daemon.url + "/v1/chat/completions",
        json={"model": MODEL, "messages": USER, "max_tokens": 2, **nulls},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["finish_reason"] == "length"


def test_max_completion_tokens(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=USER, max_completion_tokens=4)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 4


def test_stop_sequences(client: openai.OpenAI) -> None:
    free = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=30, temperature=0)
    text = free.choices[0].message.content or ""
    cut = next(ch for ch in text[3:] if ch.isalpha())  # a letter the answer does contain
    stopped = client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=30, temperature=0, stop=[cut]
    )
    assert stopped.choices[0].finish_reason == "stop"
    content = stopped.choices[0].message.content or ""
    assert cut not in content and text.startswith(content)


def test_same_seed_same_text(client: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        completion = client.chat.completions.create(
            model=MODEL, messages=USER, max_tokens=24, temperature=1, seed=seed
        )
        return completion.choices[0].message.content or ""

    first = sample(1234)
    assert first and sample(1234) == first
    assert any(sample(seed) != first for seed in (1, 2, 3))


class Answer(BaseModel):
    ok: bool


def test_response_format_json_object(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Reply in JSON."}],
        max_tokens=400,
        temperature=0,
        response_format={"type": "json_object"},
    )
    content = completion.choices[0].message.content or ""
    assert content.lstrip().startswith("{")
    if completion.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content, strict=False), dict)
    else:  # cut off by max_tokens: still the beginning of a JSON object
        assert completion.choices[0].finish_reason == "length"
        assert is_json_prefix(content), content


def test_response_format_json_schema(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Is the sky blue?"}],
        max_tokens=200,
        temperature=0,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": Answer.model_json_schema(), "strict": True},
        },
    )
    # This schema's grammar admits only short texts: the answer must end within 200 tokens.
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(
        Answer.model_validate_json(completion.choices[0].message.content or "").ok, bool
    )


def test_the_sdks_parse_helper(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Is the sky blue?"}],
        max_tokens=200,
        temperature=0,
        response_format=Answer,
    )
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(completion.choices[0].message.parsed, Answer)


@pytest.mark.parametrize(
    "extra_body", [{"options": {"num_ctx": 512}}, {"num_ctx": 512}], ids=["options", "top-level"]
)
def test_context_size_from_extra_body(
    client: openai.OpenAI, daemon: Daemon, extra_body: dict[str, object]
) -> None:
    client.chat.completions.create(model=MODEL, messages=USER, max_tokens=1, extra_body=extra_body)
    assert running_context_length(daemon) == 512
    client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=1, extra_body={"num_ctx": 1024}
    )
    assert running_context_length(daemon) == 1024


@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_over_the_context_is_context_length_exceeded(
    client: openai.OpenAI, stream: bool
) -> None:
    """What coding agents look for before they compact and retry (issue 28): OpenAI's
    code and message, naming the context and the prompt's length, from the real runner."""
    long = [{"role": "user", "content": "many words " * 200}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=long, max_tokens=1, stream=stream, extra_body={"num_ctx": 64}
        )
    assert caught.value.code == "context_length_exceeded"
    assert caught.value.param == "messages"
    found = re.fullmatch(
        r"This model's maximum context length is (\d+) tokens\. However, your messages "
        r"resulted in (\d+) tokens\. Please reduce the length of the messages\.",
        caught.value.body["message"],  # type: ignore[index]
    )
    assert found is not None, caught.value.body
    limit, tokens = int(found[1]), int(found[2])
    assert limit == 64 and tokens > limit
    with pytest.raises(openai.BadRequestError) as completion:
        client.completions.create(
            model=MODEL, prompt="many words " * 200, max_tokens=1, extra_body={"num_ctx": 64}
        )
    assert (completion.value.code, completion.value.param) == ("context_length_exceeded", "prompt")


def test_cached_tokens_count_the_prefix_cache(client: openai.OpenAI) -> None:
    """The same long prompt twice: the second reads most of it from the prefix cache, and
    usage says how much (prompt_tokens_details.cached_tokens)."""
    messages = [{"role": "user", "content": "a shared beginning " * 20 + "then a question"}]
    first = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=1)
    again = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=1)
    assert first.usage is not None and again.usage is not None
    assert again.usage.prompt_tokens == first.usage.prompt_tokens
    details = again.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens is not None
    assert first.usage.prompt_tokens // 2 < details.cached_tokens < again.usage.prompt_tokens


def test_message_forms_the_sdk_sends(debug_daemon: Daemon) -> None:
    messages: list[dict[str, object]] = [
        {"role": "developer", "content": "Be brief. (developer-turn)"},
        {"role": "user", "content": [{"type": "text", "text": "What is 1 + 2? (sdk-forms)"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "the sum is 3"},
    ]
    tools = [
        {
            "type": "function",
            "function": {
                "name": "add",
                "description": "Add two numbers.",
                "parameters": {
                    "type": "object",
                    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                    "required": ["a", "b"],
                },
            },
        }
    ]
    with openai.OpenAI(
        base_url=debug_daemon.url + "/v1", api_key="unused", max_retries=0, timeout=60
    ) as client:
        completion = client.chat.completions.create(
            model="tiny-tools",
            messages=messages,  # type: ignore[arg-type]
            tools=tools,  # type: ignore[arg-type]
            max_tokens=3,
        )
        assert completion.choices[0].message.role == "assistant"
        assert completion.usage is not None and completion.usage.completion_tokens == 3
        with pytest.raises(openai.BadRequestError, match="tiny does not support tools"):
            client.chat.completions.create(model=MODEL, messages=messages, tools=tools)  # type: ignore[arg-type]

        # Arguments are parsed (templates expect an object), so broken JSON is a 400.
        broken = json.loads(json.dumps(messages))
        broken[2]["tool_calls"][0]["function"]["arguments"] = '{"a": 1,'
        with pytest.raises(openai.BadRequestError, match="arguments"):
            client.chat.completions.create(model=MODEL, messages=broken, max_tokens=3)

    # What the template made of each form: the developer turn as the system text before
    # the tool signatures, the text part, the call's arguments string as an object, and
    # the result, in that order.
    prompt = debug_daemon.logged_prompt("(sdk-forms)")
    order = [
        "<|im_start|>system\nBe brief. (developer-turn)\n\nYou may call functions.",
        '"description": "Add two numbers."',
        "<|im_start|>user\nWhat is 1 + 2? (sdk-forms)<|im_end|>",
        '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>',
        "<tool_response>\nthe sum is 3\n</tool_response><|im_end|>\n<|im_start|>assistant\n",
    ]
    assert all(part in prompt for part in order), prompt
    assert [prompt.index(part) for part in order] == sorted(prompt.index(p) for p in order)
    assert prompt.count("(developer-turn)") == 1, prompt  # not also as a turn of its own


# ------------------------------------------------------------- completions


def test_completions(client: openai.OpenAI) -> None:
    completion = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=5)
    assert completion.object == "text_completion"
    (choice,) = completion.choices
    assert choice.text and choice.finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 5

    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt="Once upon",
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-2].choices[0].finish_reason == "length"


# -------------------------------------------------------------- embeddings


def test_embeddings_float_and_base64_agree(client: openai.OpenAI) -> None:
    inputs = ["first text", "second text"]
    floats = client.embeddings.create(model=MODEL, input=inputs, encoding_format="float")
    default = client.embeddings.create(model=MODEL, input=inputs)  # the SDK asks for base64
    assert floats.object == "list" and len(floats.data) == len(default.data) == 2
    assert [d.index for d in floats.data] == [0, 1]
    for a, b in zip(floats.data, default.data, strict=True):
        assert len(a.embedding) == len(b.embedding) > 0
        assert all(
            math.isclose(x, y, abs_tol=1e-6) for x, y in zip(a.embedding, b.embedding, strict=True)
        )
        assert math.isclose(math.sqrt(sum(x * x for x in a.embedding)), 1.0, abs_tol=1e-4)
    assert floats.usage.prompt_tokens > 0

    single = client.embeddings.create(model=MODEL, input="first text", dimensions=8)
    assert len(single.data) == 1 and len(single.data[0].embedding) == 8
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=MODEL, input=[])


# ------------------------------------------------------------------ errors


def test_missing_model_is_not_found(client: openai.OpenAI) -> None:
    calls = [
        lambda: client.chat.completions.create(model="no-such-model", messages=USER),
        lambda: client.chat.completions.create(model="no-such-model", messages=USER, stream=True),
        lambda: client.completions.create(model="no-such-model", prompt="Hi"),
        lambda: client.embeddings.create(model="no-such-model", input="Hi"),
    ]
    for call in calls:
        with pytest.raises(openai.NotFoundError) as excinfo:
            call()
        assert excinfo.value.status_code == 404
        body = excinfo.value.body
        assert isinstance(body, dict) and body["type"] == "not_found_error"
        assert "not found" in body["message"]


@pytest.mark.parametrize(
    "fields",
    [
        {"temperature": 5},
        {"top_p": 1.5},
        {"max_tokens": -1},
        {"extra_body": {"options": {"temperature": "hot"}}},
        {"extra_body": {"options": {"no_such_option": 1}}},
        {"extra_body": {"num_ctx": 1}},
    ],
    ids=["temperature", "top_p", "max_tokens", "option-type", "unknown-option", "num_ctx"],
)
def test_bad_values_are_bad_requests(client: openai.OpenAI, fields: dict[str, object]) -> None:
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.chat.completions.create(model=MODEL, messages=USER, **fields)  # type: ignore[call-overload]
    body = excinfo.value.body
    assert isinstance(body, dict) and body["type"] == "invalid_request_error"
    assert isinstance(body["message"], str) and body["message"]


def test_a_runner_crash_mid_stream_is_an_api_error(client: openai.OpenAI, daemon: Daemon) -> None:
    raised: openai.APIError | None = None
    for _ in range(3):  # the tiny model is fast: a run may end before the kill lands
        try:
            for _chunk in client.chat.completions.create(
                model=MODEL, messages=USER, max_tokens=100000, stream=True
            ):
                daemon.kill_runners()
        except openai.APIError as exc:
            raised = exc
            break
    assert raised is not None and "runner" in raised.message
    completion = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=2)
    assert completion.choices[0].finish_reason == "length"


# ------------------------------------------------------------ tools, thinking

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                # Every part bounded, so even random weights finish the call within
                # max_tokens (a free string could run on for ever).
                "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
                # llama-cpp-python's schema converter does not enforce minimum and
                # maximum, and counts maxLength in bytes of a random model's broken
                # UTF-8 (docs/api.md): the test sticks to what it enforces exactly.
                "days": {"type": "integer"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "days", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "maxLength": 8}},
        },
    },
}
ASK = [{"role": "user", "content": "Weather in Paris for 3 days?"}]


def assert_weather_arguments(arguments: str) -> None:
    """What the tool's schema says, checked by hand."""
    parsed = json.loads(arguments)
    assert set(parsed) == {"city", "days", "unit"}
    assert parsed["city"] in ("Paris", "Rome", "Oslo")
    assert isinstance(parsed["days"], int) and not isinstance(parsed["days"], bool)
    assert parsed["unit"] in ("celsius", "fahrenheit")


@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "get_weather"}}]
)
def test_enforced_tool_choice_gives_a_valid_call_even_from_random_weights(
    client: openai.OpenAI, tool_models: dict[str, str], choice: object
) -> None:
    tools = [WEATHER_TOOL] if choice == "required" else [TIME_TOOL, WEATHER_TOOL]
    for seed in (1, 2, 3):  # sampled, not greedy: the grammar holds for any draw
        completion = client.chat.completions.create(
            model="tiny-tools",
            messages=ASK,  # type: ignore[arg-type]
            tools=tools,  # type: ignore[arg-type]
            tool_choice=choice,  # type: ignore[arg-type]
            parallel_tool_calls=False,
            max_tokens=300,
            seed=seed,
            temperature=1.0,
        )
        (answer,) = completion.choices
        assert answer.finish_reason == "tool_calls", answer
        assert answer.message.content is None
        (call,) = answer.message.tool_calls or []
        assert call.type == "function" and call.id
        assert call.function.name == "get_weather"
        assert_weather_arguments(call.function.arguments)


def test_streamed_tool_call_deltas(client: openai.OpenAI, tool_models: dict[str, str]) -> None:
    stream = client.chat.completions.create(
        model="tiny-tools",
        messages=ASK,  # type: ignore[arg-type]
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=300,
        stream=True,
    )
    name, arguments, ids, finish = "", "", set(), None
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        for call in delta.tool_calls or []:
            assert call.index == 0
            if call.id:
                ids.add(call.id)
            if call.function and call.function.name:
                assert not arguments, "the name comes before the arguments"
                name += call.function.name
            if call.function and call.function.arguments:
                arguments += call.function.arguments
        finish = chunk.choices[0].finish_reason or finish
    assert (name, len(ids), finish) == ("get_weather", 1, "tool_calls")
    assert_weather_arguments(arguments)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "not among tools"),
        ({"tools": [{"type": "function", "function": {"description": "x"}}]}, "no function name"),
        ({"tool_choice": "required", "tools": []}, "at least one tool"),
        ({"tool_choice": {"type": "function"}}, "tool_choice must be"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        (
            {
                "tool_choice": "required",
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"$ref": "#/nowhere"}},
                    }
                ],
            },
            "the parameters of tool 'f'",
        ),
    ],
)
def test_bad_tool_requests_are_400s(
    client: openai.OpenAI, tool_models: dict[str, str], body: dict[str, object], message: str
) -> None:
    request = {"model": "tiny-tools", "messages": ASK, "tools": [WEATHER_TOOL], **body}
    answer = httpx.post(str(client.base_url) + "chat/completions", json=request, timeout=60)
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["error"]["message"]


def test_reasoning_content(client: openai.OpenAI, tool_models: dict[str, str]) -> None:
    completion = client.chat.completions.create(
        model="tiny-r1", messages=USER, max_tokens=10, temperature=0
    )
    message = completion.choices[0].message
    reasoning = getattr(message, "reasoning_content", None)
    assert reasoning and not message.content
    stream = client.chat.completions.create(
        model="tiny-r1", messages=USER, max_tokens=10, temperature=0, stream=True
    )
    streamed = "".join(
        getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in stream if c.choices
    )
    assert streamed == reasoning
    off = client.chat.completions.create(
        model="tiny-r1",
        messages=USER,
        max_tokens=10,
        temperature=0,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )
    assert getattr(off.choices[0].message, "reasoning_content", None) is None


def test_logprobs_chat_and_completions(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=5, temperature=0, logprobs=True, top_logprobs=2
    )
    (choice,) = completion.choices
    assert choice.logprobs is not None and choice.logprobs.content is not None
    content = choice.logprobs.content
    assert len(content) == 5 and "".join(t.token for t in content) == choice.message.content
    for token in content:
        assert len(token.top_logprobs) == 2 and token.top_logprobs[0].token == token.token
        assert token.bytes is not None and token.logprob <= 0

    stream = client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=5, temperature=0, logprobs=True, stream=True
    )
    streamed = [
        t
        for c in stream
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content or []
    ]
    assert [t.token for t in streamed] == [t.token for t in content]

    legacy = client.completions.create(
        model=MODEL, prompt="Once upon", max_tokens=4, temperature=0, logprobs=3, echo=False
    )
    logprobs = legacy.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens and len(logprobs.tokens) == 4
    assert "".join(logprobs.tokens) == legacy.choices[0].text
    assert logprobs.text_offset == [sum(len(t) for t in logprobs.tokens[:i]) for i in range(4)]
    assert logprobs.top_logprobs and all(len(alt) <= 3 for alt in logprobs.top_logprobs)
    assert (
        client.chat.completions.create(model=MODEL, messages=USER, max_tokens=2).choices[0].logprobs
        is None
    )


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("chat/completions", {"messages": USER, "top_logprobs": 2}, "top_logprobs needs logprobs"),
        (
            "completions",
            {"prompt": "x", "echo": True, "logprobs": 1, "stream": True},
            "echo with logprobs",
        ),
        ("chat/completions", {"messages": USER, "n": 17}, "n"),
    ],
)
def test_documented_refusals(
    client: openai.OpenAI, path: str, body: dict[str, object], message: str
) -> None:
    answer = httpx.post(str(client.base_url) + path, json={"model": MODEL, **body}, timeout=60)
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["error"]["message"]


def test_n_choices(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=8, temperature=1.0, seed=7, n=3
    )
    assert [c.index for c in completion.choices] == [0, 1, 2]
    texts = [c.message.content for c in completion.choices]
    assert all(texts) and len(set(texts)) > 1  # distinct seeds, distinct answers
    assert completion.usage is not None
    single = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=1)
    assert single.usage is not None
    assert completion.usage.prompt_tokens == single.usage.prompt_tokens  # one prompt
    assert completion.usage.completion_tokens == 3 * 8

    stream = client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=8, temperature=1.0, seed=7, n=3, stream=True
    )
    streamed = ["", "", ""]
    finished = set()
    for chunk in stream:
        for choice in chunk.choices:
            streamed[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished.add(choice.index)
    assert streamed == texts and finished == {0, 1, 2}  # the same seeds, the same answers

    legacy = client.completions.create(
        model=MODEL, prompt="Once", max_tokens=4, n=2, seed=3, temperature=1.0
    )
    assert [c.index for c in legacy.choices] == [0, 1] and all(c.text for c in legacy.choices)


def test_echo_returns_the_prompt_tokens_with_their_logprobs(client: openai.OpenAI) -> None:
    prompt = "Once upon a time"
    completion = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=3, temperature=0, echo=True, logprobs=2
    )
    (choice,) = completion.choices
    assert choice.text.startswith(prompt)
    logprobs = choice.logprobs
    assert logprobs is not None and logprobs.tokens and logprobs.token_logprobs
    assert "".join(logprobs.tokens) == choice.text  # prompt tokens, then the answer's
    assert logprobs.token_logprobs[0] is None  # nothing predicts the first token
    assert all(isinstance(v, float) and v <= 0 for v in logprobs.token_logprobs[1:])
    assert completion.usage is not None
    prompt_count = len(logprobs.tokens) - 3
    assert completion.usage.prompt_tokens == prompt_count
    # Loglikelihood scoring (echo, max_tokens 0): the prompt's logprobs alone.
    scored = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=0, echo=True, logprobs=0
    )
    assert scored.choices[0].logprobs is not None
    assert scored.choices[0].logprobs.token_logprobs == logprobs.token_logprobs[:prompt_count]
