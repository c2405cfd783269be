"""The Responses API in-process (/v1/responses): the app over the scripted fake runner
(tests/support/fake_runner.py), so every event kind and order is exact with no model;
the input items as the messages that reach the runner; the kept responses (state on
disk, bounds, restarts); the refusals. The real clients are in
tests/e2e/test_responses_*.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from localserve.config import load_settings
from localserve.errors import ResponseNotFoundError, RunnerCrashedError
from localserve.runtime.protocol import (
    DoneEvent,
    Event,
    GenerateJob,
    LoadRequest,
    ProgressEvent,
    TextEvent,
    ThinkingEvent,
    ToolCallEvent,
)
from localserve.schemas.responses import reasoning_token
from localserve.server.app import create_app
from localserve.store.importing import import_gguf
from localserve.store.responses import KeptResponse, ResponseStore
from localserve.store.store import ModelStore
from tests.support import chat_templates
from tests.support.fake_runner import ID, FakeFactory, FakeRunner
from tests.support.tiny_gguf import write_tiny_gguf

T = TypeVar("T")
SCRIPT: list[Event] = [
    ThinkingEvent(ID, "hmm"),
    TextEvent(ID, " sure"),
    ToolCallEvent(ID, 0, "get_weather", {"city": "Paris"}),
    ToolCallEvent(ID, 1, "get_time", {}, call_id="abc123"),
]
TOOLS = [
    {"type": "function", "name": "get_weather", "parameters": {"type": "object"}, "strict": True},
    {"type": "function", "name": "get_time"},
]


@pytest.fixture
def models(isolated_home: Path, tmp_path: Path) -> None:
    store = ModelStore(isolated_home / "models")
    for name, template in (("tools", chat_templates.QWEN3), ("plain", chat_templates.CHATML_PLAIN)):
        path = write_tiny_gguf(tmp_path / f"{name}.gguf", chat_template=template)
        for _ in import_gguf(store, path, name):
            pass


Client = httpx.AsyncClient


def with_app(
    factory: FakeFactory, go: Callable[[Client], Coroutine[Any, Any, T]], script: Any = SCRIPT
) -> T:
    """Run ``go`` with a client of a fresh app (over ``factory``) in this test's home."""
    factory.script = script
    app = create_app(load_settings(), runner_factory=factory)

    async def main() -> T:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
                return await go(c)

    return asyncio.run(main())


def create(body: dict[str, Any], factory: FakeFactory | None = None) -> httpx.Response:
    async def go(client: Client) -> httpx.Response:
        return await client.post("/v1/responses", json=body)

    return with_app(factory or FakeFactory(), go)


def events_of(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """A Responses stream's (event name, data) pairs; asserts the framing."""
    found = []
    for block in response.text.split("\n\n"):
        if not block.strip():
            continue
        name, data = block.split("\n")
        assert name.startswith("event: ") and data.startswith("data: "), block
        payload = json.loads(data.removeprefix("data: "))
        assert payload["type"] == name.removeprefix("event: ")
        found.append((payload["type"], payload))
    return found


def job_of(factory: FakeFactory, index: int = 0) -> GenerateJob:
    return factory.runners[0].requests[index]


# ------------------------------------------------------------------ the shapes


def test_whole_response(models: None) -> None:
    answer = create({"model": "tools", "input": "Weather?", "tools": TOOLS})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["id"].startswith("resp_") and body["object"] == "response"
    assert body["status"] == "completed" and body["incomplete_details"] is None
    assert [item["type"] for item in body["output"]] == [
        "reasoning",
        "message",
        "function_call",
        "function_call",
    ]
    reasoning, message, first, second = body["output"]
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "hmm"}]
    assert "encrypted_content" not in reasoning  # only with include
    assert message["role"] == "assistant" and message["id"].startswith("msg_")
    assert message["content"] == [{"type": "output_text", "text": "Hello sure", "annotations": []}]
    assert first["name"] == "get_weather" and json.loads(first["arguments"]) == {"city": "Paris"}
    assert first["call_id"].startswith("call_") and first["id"].startswith("fc_")
    assert second["call_id"] == "abc123"  # the model's own id, where its format has one
    assert body["usage"] == {
        "input_tokens": 0,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 2,
        "output_tokens_details": {"reasoning_tokens": 1},
        "total_tokens": 2,
    }
    assert body["tools"] == TOOLS and body["tool_choice"] == "auto"
    assert body["text"] == {"format": {"type": "text"}} and body["store"] is True


def test_streamed_event_order(models: None) -> None:
    answer = create({"model": "tools", "input": "Weather?", "tools": TOOLS, "stream": True})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/event-stream")
    events = events_of(answer)
    assert [name for name, _ in events] == [
        "response.created",
        "response.in_progress",
        # "Hello": a message
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        # "hmm": the message ends, reasoning starts
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
        # " sure": a second message
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        # two calls
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    created, final = events[0][1]["response"], events[-1][1]["response"]
    assert created["status"] == "in_progress" and created["output"] == []
    assert created["id"] == final["id"] and final["status"] == "completed"
    done_items = [data["item"] for name, data in events if name == "response.output_item.done"]
    assert final["output"] == done_items
    added = [data for name, data in events if name == "response.output_item.added"]
    assert [a["output_index"] for a in added] == [0, 1, 2, 3, 4]
    assert [a["item"]["id"] for a in added] == [item["id"] for item in done_items]
    assert all(a["item"]["status"] == "in_progress" for a in added)
    # Each delta names its item; the .done text is the deltas joined.
    for name, data in events:
        if name.endswith(".delta") or name.endswith("text.done"):
            assert data["item_id"] == done_items[data["output_index"]]["id"]
    assert done_items[0]["content"][0]["text"] == "Hello"
    arguments = [d for n, d in events if n == "response.function_call_arguments.done"]
    assert [(a["name"], json.loads(a["arguments"])) for a in arguments] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {}),
    ]


def test_whole_and_streamed_agree_on_usage(models: None) -> None:
    whole = create({"model": "tools", "input": "hi"}).json()
    streamed = events_of(create({"model": "tools", "input": "hi", "stream": True}))
    assert streamed[-1][1]["response"]["usage"] == whole["usage"]


class LengthRunner(FakeRunner):
    """Reads its prompt in two chunks, thinks, writes, and runs into its output limit."""

    async def generate(self, job: GenerateJob) -> AsyncIterator[Event]:
        self.requests.append(job)
        if job.progress:
            yield ProgressEvent(ID, total=10, cache=4, processed=0, time_ms=0)
            yield ProgressEvent(ID, total=10, cache=4, processed=3, time_ms=5)
            yield ProgressEvent(ID, total=10, cache=4, processed=6, time_ms=9)
        yield ThinkingEvent(ID, "let me")
        yield ThinkingEvent(ID, " see")
        yield TextEvent(ID, "The an")
        yield DoneEvent(ID, "length", prompt_eval_count=10, prompt_cached=4, eval_count=3)


class LengthFactory(FakeFactory):
    async def __call__(self, load: LoadRequest) -> FakeRunner:
        runner = LengthRunner(load.paths, load.options)
        self.runners.append(runner)
        return runner


def test_cut_by_the_output_limit_is_incomplete(models: None) -> None:
    body = {"model": "tools", "input": "hi", "max_output_tokens": 3}
    whole = create(body, LengthFactory()).json()
    assert whole["status"] == "incomplete"
    assert [i["status"] for i in whole["output"]] == ["completed", "incomplete"]
    assert whole["incomplete_details"] == {"reason": "max_output_tokens"}
    assert whole["usage"]["input_tokens_details"] == {"cached_tokens": 4}
    assert whole["usage"]["output_tokens_details"] == {"reasoning_tokens": 2}
    assert whole["max_output_tokens"] == 3

    factory = LengthFactory()
    events = events_of(create({**body, "stream": True}, factory))
    names = [name for name, _ in events]
    # The prompt read in two chunks: the stream shows it is alive after each.
    assert names[:4] == ["response.created"] + ["response.in_progress"] * 3
    assert names[-1] == "response.incomplete"
    final = events[-1][1]["response"]
    assert [i["status"] for i in final["output"]] == ["completed", "incomplete"]
    assert final["output"][0]["content"][0]["text"] == "let me see"
    assert job_of(factory).options.num_predict == 3


def test_an_answer_with_nothing_in_it_is_one_empty_message(models: None) -> None:
    answer = create({"model": "tools", "input": "hi", "stream": True}, FakeFactory())
    assert answer.status_code == 200
    factory = FakeFactory()

    class Silent(FakeRunner):
        async def generate(self, job: GenerateJob) -> AsyncIterator[Event]:
            yield DoneEvent(ID, "stop")

    class SilentFactory(FakeFactory):
        async def __call__(self, load: LoadRequest) -> FakeRunner:
            return Silent(load.paths, load.options)

    whole = create({"model": "tools", "input": "hi"}, SilentFactory()).json()
    assert [(i["type"], i["content"][0]["text"]) for i in whole["output"]] == [("message", "")]
    events = events_of(create({"model": "tools", "input": "hi", "stream": True}, SilentFactory()))
    assert [n for n, _ in events][2:] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert factory.runners == []


class CrashingRunner(FakeRunner):
    async def generate(self, job: GenerateJob) -> AsyncIterator[Event]:
        yield ProgressEvent(ID, total=3, cache=0, processed=0, time_ms=0)
        yield TextEvent(ID, "Hel")
        raise RunnerCrashedError("the model runner stopped: killed by SIGKILL")


class CrashingFactory(FakeFactory):
    async def __call__(self, load: LoadRequest) -> FakeRunner:
        return CrashingRunner(load.paths, load.options)


def test_a_failure_mid_stream_ends_with_error_and_failed(models: None) -> None:
    answer = create({"model": "tools", "input": "hi", "stream": True}, CrashingFactory())
    assert answer.status_code == 200
    events = events_of(answer)
    names = [name for name, _ in events]
    assert names[-2:] == ["error", "response.failed"]
    error, failed = events[-2][1], events[-1][1]["response"]
    assert "runner stopped" in error["message"] and error["code"] == "server_error"
    assert failed["status"] == "failed" and "runner stopped" in failed["error"]["message"]
    assert [n for n, _ in events].count("response.output_text.delta") == 1


# ------------------------------------------------------------ input -> messages


def test_input_items_become_the_chat_messages(models: None) -> None:
    factory = FakeFactory()
    items = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
        {
            "type": "reasoning",
            "id": "rs_1",
            "summary": [],
            "encrypted_content": reasoning_token("I should call."),
        },
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Calling."}],
        },
        {
            "type": "function_call",
            "call_id": "c1",
            "name": "get_weather",
            "arguments": '{"city": "Rome"}',
        },
        {"type": "function_call", "call_id": "c2", "name": "get_time", "arguments": ""},
        {"type": "function_call_output", "call_id": "c1", "output": "18 C"},
        {
            "type": "function_call_output",
            "call_id": "c2",
            "output": [{"type": "input_text", "text": "noon"}],
        },
        {"role": "assistant", "content": "It is 18 C."},
        {"role": "user", "content": "Thanks"},
    ]
    body = {"model": "tools", "instructions": "You help.", "input": items, "tools": TOOLS}
    assert create(body, factory).status_code == 200
    job = job_of(factory)
    assert [m["role"] for m in job.messages or []] == [
        "system",
        "system",
        "user",
        "assistant",
        "tool",
        "tool",
        "assistant",
        "user",
    ]
    messages = job.messages or []
    assert messages[0]["content"] == "You help." and messages[1]["content"] == "Be brief."
    turn = messages[3]
    assert turn["content"] == "Calling." and turn["reasoning_content"] == "I should call."
    assert [c["function"] for c in turn["tool_calls"]] == [
        {"name": "get_weather", "arguments": {"city": "Rome"}},
        {"name": "get_time", "arguments": {}},
    ]
    assert [c["id"] for c in turn["tool_calls"]] == ["c1", "c2"]
    assert messages[4] == {
        "role": "tool",
        "tool_call_id": "c1",
        "content": "18 C",
        "name": "get_weather",
    }
    assert messages[5]["content"] == "noon" and messages[5]["name"] == "get_time"
    assert job.tools == [
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "get_time"}},
    ]
    assert job.tool_choice == "auto" and job.progress is False


def test_encrypted_reasoning_round_trip(models: None) -> None:
    """What a client that keeps no state (Codex) does: ask for the reasoning encoded,
    send it back as it came; the next prompt has the reasoning text."""
    body = {
        "model": "tools",
        "input": "hi",
        "include": ["reasoning.encrypted_content"],
        "store": False,
    }
    first = create(body).json()
    reasoning = first["output"][0]
    assert reasoning["type"] == "reasoning" and reasoning["encrypted_content"]
    factory = FakeFactory()
    sent_back = {**reasoning, "content": None}
    later = [{"role": "user", "content": "hi"}, sent_back, {"role": "user", "content": "and?"}]
    assert create({"model": "tools", "input": later}, factory).status_code == 200
    assert (job_of(factory).messages or [])[1]["reasoning_content"] == "hmm"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"tools": [{"type": "web_search"}]}, 400, "tools[0] is a tool of type 'web_search'"),
        ({"tools": [{"type": "file_search", "vector_store_ids": []}]}, 400, "'file_search'"),
        ({"tools": [{"type": "mcp", "server_label": "x"}]}, 400, "'mcp'"),
        ({"tools": [{"type": "computer_use_preview"}]}, 400, "only function tools"),
        ({"tool_choice": {"type": "web_search_preview"}}, 400, "'web_search_preview'"),
        ({"tool_choice": {"type": "function", "name": "nope"}}, 400, "not among tools"),
        ({"tool_choice": "required", "tools": []}, 400, "at least one tool"),
        ({"tools": [{"type": "function"}]}, 400, "no function name"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, 400, "'item_reference'"),
        ({"input": [{"role": "tool", "content": "x"}]}, 400, "input[0].role"),
        ({"input": [{"type": "function_call", "name": "f"}]}, 400, "input[0].call_id"),
        ({"input": []}, 400, "input is empty"),
        ({"input": None}, 400, "input is empty"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            400,
            "'input_file'",
        ),
        (
            {
                "input": [
                    {
                        "role": "user",
                        "content": [{"type": "input_image", "image_url": "https://x/y.png"}],
                    }
                ]
            },
            400,
            "does not fetch URLs",
        ),
        (
            {
                "input": [
                    {"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}
                ]
            },
            400,
            "keeps no files",
        ),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, 400, "text.format.schema"),
        ({"reasoning": {"effort": "extreme"}}, 400, "reasoning.effort"),
        ({"max_output_tokens": 0}, 400, "max_output_tokens"),
        ({"previous_response_id": "resp_nothere"}, 404, "'resp_nothere' not found"),
        ({"previous_response_id": "../../etc/passwd"}, 404, "'../../etc/passwd' not found"),
    ],
)
def test_refusals(models: None, body: dict[str, Any], status: int, message: str) -> None:
    factory = FakeFactory()
    answer = create({"model": "tools", "input": "hi", "tools": TOOLS, **body}, factory)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert message in error["message"]
    assert factory.loads == []  # refused before anything loads


def test_fields_that_change_nothing_are_accepted(models: None) -> None:
    factory = FakeFactory()
    body = {
        "model": "tools",
        "input": "hi",
        "store": False,
        "truncation": "auto",
        "metadata": {"k": "v"},
        "user": "u",
        "prompt_cache_key": "k",
        "service_tier": "auto",
        "safety_identifier": "s",
        "include": ["message.output_text.logprobs"],
        "text": {"verbosity": "low"},
        "reasoning": {"summary": "auto"},
        "client_metadata": {"x": "y"},
        "background": False,
        "max_tool_calls": 3,
        "parallel_tool_calls": False,
    }
    answer = create(body, factory)
    assert answer.status_code == 200, answer.text
    assert answer.json()["metadata"] == {"k": "v"}


def test_effort_reaches_a_thinking_model_and_is_dropped_for_others(models: None) -> None:
    factory = FakeFactory()
    for model in ("tools", "plain"):
        body = {"model": model, "input": "hi", "reasoning": {"effort": "minimal"}}
        assert create(body, factory).status_code == 200
    thinking, plain = (runner.requests[0] for runner in factory.runners)
    assert thinking.think == "low" and plain.think is None


def test_namespaced_tools_are_functions(models: None) -> None:
    factory = FakeFactory()
    space = {"type": "namespace", "name": "agents", "description": "x", "tools": [TOOLS[0]]}
    body = {"model": "tools", "input": "hi", "tools": [space, TOOLS[1]]}
    whole = create(body, factory).json()
    calls = [i for i in whole["output"] if i["type"] == "function_call"]
    assert [(c["name"], c.get("namespace")) for c in calls] == [
        ("get_weather", "agents"),
        ("get_time", None),
    ]
    assert [t["function"]["name"] for t in job_of(factory).tools or []] == [
        "get_weather",
        "get_time",
    ]


def test_structured_output_formats(models: None) -> None:
    factory = FakeFactory()
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    formats = [
        {"type": "json_object"},
        {"type": "json_schema", "name": "answer", "schema": schema, "strict": True},
    ]
    for fmt in formats:
        answer = create({"model": "tools", "input": "hi", "text": {"format": fmt}}, factory)
        assert answer.json()["text"] == {"format": fmt}
    assert [r.requests[0].format for r in factory.runners] == ["json", schema]


# ------------------------------------------------------------------ kept responses


def test_kept_responses_get_continue_list_and_delete(models: None) -> None:
    factory = FakeFactory()

    async def go(client: Client) -> None:
        first = (await client.post("/v1/responses", json={"model": "tools", "input": "Hi"})).json()
        got = await client.get(f"/v1/responses/{first['id']}")
        assert got.status_code == 200 and got.json() == first
        body = {
            "model": "tools",
            "instructions": "Only this turn.",
            "input": [{"role": "user", "content": "More"}],
            "previous_response_id": first["id"],
        }
        second = (await client.post("/v1/responses", json=body)).json()
        assert second["previous_response_id"] == first["id"]
        # Turn 2 read turn 1's input and answer (not its instructions) and its own.
        job = job_of(factory, 1)
        assert [(m["role"], m["content"]) for m in job.messages or []] == [
            ("system", "Only this turn."),
            ("user", "Hi"),
            ("assistant", "Hello sure"),
            ("user", "More"),
        ]
        assert job.messages[2]["reasoning_content"] == "hmm"  # type: ignore[index]
        listed = (await client.get(f"/v1/responses/{second['id']}/input_items")).json()
        kinds = [(i["type"], i.get("role")) for i in listed["data"]]
        # Newest first: its own input, then the first turn's output, then its input.
        assert kinds == [
            ("message", "user"),
            ("function_call", None),
            ("function_call", None),
            ("message", "assistant"),
            ("reasoning", None),
            ("message", "user"),
        ]
        assert listed["object"] == "list" and listed["has_more"] is False
        assert listed["first_id"] == listed["data"][0]["id"]
        assert all(isinstance(i["id"], str) and i["id"] for i in listed["data"])
        page = (
            await client.get(
                f"/v1/responses/{second['id']}/input_items",
                params={"order": "asc", "limit": 2, "after": listed["data"][-1]["id"]},
            )
        ).json()
        assert [i["id"] for i in page["data"]] == [i["id"] for i in listed["data"][-3:-1][::-1]]
        assert page["has_more"] is True
        gone = await client.delete(f"/v1/responses/{first['id']}")
        assert gone.json() == {"id": first["id"], "object": "response", "deleted": True}
        for method in ("GET", "DELETE"):
            again = await client.request(method, f"/v1/responses/{first['id']}")
            assert again.status_code == 404
            assert first["id"] in again.json()["error"]["message"]
        # The second holds its whole conversation: it goes on without the first.
        third = {"model": "tools", "input": "Go on", "previous_response_id": second["id"]}
        assert (await client.post("/v1/responses", json=third)).status_code == 200
        assert [m["role"] for m in job_of(factory, 2).messages or []] == [
            "user",
            "assistant",
            "user",
            "assistant",
            "user",
        ]

    with_app(factory, go)


def test_kept_responses_survive_a_restart_and_store_false_keeps_nothing(models: None) -> None:
    async def first(client: Client) -> tuple[str, str]:
        kept = (await client.post("/v1/responses", json={"model": "tools", "input": "A"})).json()
        body = {"model": "tools", "input": "B", "store": False, "stream": True}
        streamed = events_of(await client.post("/v1/responses", json=body))
        return kept["id"], streamed[-1][1]["response"]["id"]

    kept_id, unkept_id = with_app(FakeFactory(), first)
    factory = FakeFactory()

    async def after_restart(client: Client) -> None:
        assert (await client.get(f"/v1/responses/{kept_id}")).status_code == 200
        assert (await client.get(f"/v1/responses/{unkept_id}")).status_code == 404
        body = {"model": "tools", "input": "C", "previous_response_id": kept_id, "stream": True}
        events = events_of(await client.post("/v1/responses", json=body))
        final = events[-1][1]["response"]
        assert (await client.get(f"/v1/responses/{final['id']}")).json() == final

    with_app(factory, after_restart)
    assert [m["content"] for m in job_of(factory).messages or []] == ["A", "Hello sure", "C"]


def test_the_bounds_drop_the_oldest(
    models: None, monkeypatch: pytest.MonkeyPatch, isolated_home: Path
) -> None:
    monkeypatch.setenv("LOCALSERVE_RESPONSES_MAX_COUNT", "2")

    async def go(client: Client) -> list[int]:
        ids = []
        for text in ("one", "two", "three"):
            answer = await client.post("/v1/responses", json={"model": "tools", "input": text})
            ids.append(answer.json()["id"])
            await asyncio.sleep(0.01)  # distinct write times
        return [(await client.get(f"/v1/responses/{i}")).status_code for i in ids]

    assert with_app(FakeFactory(), go) == [404, 200, 200]
    assert len(list((isolated_home / "state" / "responses").glob("*.json"))) == 2


def test_store_bounds_by_bytes(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path, max_count=100, max_bytes=1000)
    small = KeptResponse({"id": "x", "output": []}, [], [{"text": "a" * 300}])
    for name in ("resp_a", "resp_b", "resp_c"):
        assert store.put(name, small)
    sizes = sum(p.stat().st_size for p in tmp_path.glob("*.json"))
    assert sizes <= 1000
    with pytest.raises(ResponseNotFoundError):
        store.get("resp_a")
    assert store.get("resp_c").input == small.input
    huge = KeptResponse({"id": "x", "output": []}, [], [{"text": "a" * 2000}])
    assert store.put("resp_d", huge) is False
    for bad in ("resp_../x", "../resp_a", "resp_", "x" * 300, "resp_a/b"):
        with pytest.raises(ResponseNotFoundError):
            store.get(bad)
    (tmp_path / "resp_e.json").write_text("{half")
    with pytest.raises(ResponseNotFoundError):
        store.get("resp_e")


def test_a_response_that_cannot_be_kept_is_still_answered(
    models: None, isolated_home: Path
) -> None:
    state = isolated_home / "state"
    state.mkdir(parents=True, exist_ok=True)
    (state / "responses").write_text("a file where the folder goes")

    async def go(client: Client) -> tuple[int, int]:
        answer = await client.post("/v1/responses", json={"model": "tools", "input": "hi"})
        kept = await client.get(f"/v1/responses/{answer.json()['id']}")
        return answer.status_code, kept.status_code

    assert with_app(FakeFactory(), go) == (200, 404)
