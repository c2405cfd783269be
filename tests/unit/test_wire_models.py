"""The response models' one rule for keys (schemas/base.py): a field without a default
is always sent, null when None; a field that defaults to None is left out while None.
The same in both ways a model is written: model_dump() for json.dumps (streams, whole
answers) and pydantic's JSON (FastAPI's response_model). And the OpenAPI schema names
the model of every JSON answer. The bytes of every route are in test_wire_golden.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from localserve.config import load_settings
from localserve.schemas import answer, ollama, openai
from localserve.schemas.base import Response
from localserve.server.app import create_app
from localserve.server.streaming import _json


class Inner(Response):
    value: int
    note: str | None = None


class Probe(Response):
    always: str | None
    sometimes: str | None = None
    flag: bool = False
    inner: Inner | None = None


class Extended(Probe):
    more: list[int] | None = None


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (Probe(always=None), {"always": None, "flag": False}),
        (Probe(always="a", sometimes="b"), {"always": "a", "sometimes": "b", "flag": False}),
        (Probe(always=None, sometimes=""), {"always": None, "sometimes": "", "flag": False}),
        (
            Probe(always=None, inner=Inner(value=1)),
            {"always": None, "flag": False, "inner": {"value": 1}},
        ),
        (Extended(always=None, more=[]), {"always": None, "flag": False, "more": []}),
        (Extended(always=None), {"always": None, "flag": False}),
    ],
)
def test_absent_when_none_if_defaulted_null_if_required(
    model: Response, expected: dict[str, Any]
) -> None:
    assert model.model_dump() == expected
    assert json.loads(model.model_dump_json()) == expected  # FastAPI's way
    assert json.loads(_json(model)) == expected  # the streams' way


def test_the_wire_cases_the_rule_was_made_for() -> None:
    # Ollama leaves thinking and tool_calls out unless there are some.
    assert ollama.AssistantMessage(content="").model_dump() == {"role": "assistant", "content": ""}
    # OpenAI sends "finish_reason": null and "logprobs": null on every chunk.
    choice = openai.ChunkChoice(
        index=0, delta=openai.Delta(content="x"), logprobs=None, finish_reason=None
    )
    assert choice.model_dump() == {
        "index": 0,
        "delta": {"content": "x"},
        "logprobs": None,
        "finish_reason": None,
    }
    # ...and content null in a message that is only tool calls.
    assert openai.ChatMessage(content=None).model_dump() == {"role": "assistant", "content": None}


def _response_models() -> list[type[Response]]:
    return [
        value
        for module in (answer, ollama, openai)
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, Response)
        and value.__module__ == module.__name__
    ]


@pytest.mark.parametrize("model", _response_models(), ids=lambda m: m.__name__)
def test_every_response_model_follows_the_rule(model: type[Response]) -> None:
    assert model.__pydantic_complete__
    schema = model.model_json_schema(mode="serialization")
    for name, field in model.model_fields.items():
        if field.default is None:
            assert field.exclude_if is not None, name
            assert name not in schema.get("required", ()), name
        elif field.is_required():
            assert name in schema["required"], name


def test_json_answers_are_documented_by_their_models() -> None:
    spec = create_app(load_settings()).openapi()
    documented = 0
    for path, methods in spec["paths"].items():
        # The blob upload routes answer with an empty body.
        if not path.startswith(("/api/", "/v1/")) or path.startswith("/api/blobs/"):
            continue
        for method, operation in methods.items():
            content = operation["responses"]["200"].get("content", {})
            if "application/json" in content:
                schema = content["application/json"]["schema"]
                assert "$ref" in schema, (method, path, schema)
                documented += 1
    assert documented >= 15
