"""The thinking budget without a model: every API's field through the real routes to the
job the runner gets (the app over the scripted fake runner), the refusals of bad
values, a Modelfile's default, and the budget's own counting (engine/thinking_budget.py).
The real model's cut thinking is in tests/engine/test_thinking_budget.py and, through
the four APIs, tests/e2e/test_thinking_budget.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from localserve.engine.thinking_budget import State, ThinkingBudget, ThinkingLimit
from localserve.runtime.protocol import GenerateJob
from localserve.schemas.tools import EFFORT_BUDGETS
from localserve.store.create import create_model
from localserve.store.importing import import_gguf
from localserve.store.modelfile import ModelfileError, parse_modelfile
from localserve.store.store import ModelStore
from tests.support import chat_templates
from tests.support.fake_runner import FakeFactory
from tests.support.tiny_gguf import write_tiny_gguf
from tests.unit.test_route_shapes import call

ASK = [{"role": "user", "content": "Why?"}]


@pytest.fixture
def models(isolated_home: Path, tmp_path: Path) -> None:
    """``thinker`` (a Qwen 3 style template) and ``budgeted``, made from it by a
    Modelfile with a default budget."""
    store = ModelStore(isolated_home / "models")
    path = write_tiny_gguf(tmp_path / "thinker.gguf", chat_template=chat_templates.QWEN3)
    for _ in import_gguf(store, path, "thinker"):
        pass
    spec = parse_modelfile("FROM thinker\nPARAMETER think_budget 512\n")
    for _ in create_model(store, "budgeted", spec, folder=tmp_path):
        pass


def job_of(path: str, body: dict[str, Any]) -> GenerateJob:
    """The job the runner got for ``body`` (answered 200)."""
    factory = FakeFactory()
    status, lines = call("POST", path, body, factory)
    assert status == 200, lines
    (runner,) = factory.runners
    (job,) = runner.requests
    return job


def messages(**fields: Any) -> dict[str, Any]:
    return {"model": "thinker", "max_tokens": 50, "messages": ASK, **fields}


EFFORTS = list(EFFORT_BUDGETS)


@pytest.mark.parametrize("effort", EFFORTS)
def test_openai_reasoning_effort(models: None, effort: str) -> None:
    job = job_of(
        "/v1/chat/completions",
        {"model": "thinker", "messages": ASK, "reasoning_effort": effort},
    )
    assert job.options.think_budget == EFFORT_BUDGETS[effort]
    # none turns thinking off in the template; the others on, at the level it reads.
    want = {"none": False, "minimal": "low", "xhigh": "high"}.get(effort, effort)
    assert job.think == want


@pytest.mark.parametrize("effort", EFFORTS)
def test_responses_reasoning_effort(models: None, effort: str) -> None:
    job = job_of(
        "/v1/responses",
        {"model": "thinker", "input": "Why?", "reasoning": {"effort": effort}, "store": False},
    )
    assert job.options.think_budget == EFFORT_BUDGETS[effort]
    assert (job.think is False) == (effort == "none")


def test_anthropic_budget_tokens(models: None) -> None:
    job = job_of("/v1/messages", messages(thinking={"type": "enabled", "budget_tokens": 300}))
    assert (job.think, job.options.think_budget) == (True, 300)
    job = job_of("/v1/messages", messages(thinking={"type": "disabled"}))
    assert (job.think, job.options.think_budget) == (False, -1)
    job = job_of("/v1/messages", messages())
    assert (job.think, job.options.think_budget) == (None, -1)


@pytest.mark.parametrize(
    ("think", "options", "budget"),
    [
        ("low", None, 1024),
        ("medium", None, 8192),
        ("high", None, 24576),
        (True, None, -1),
        (True, {"think_budget": 77}, 77),
        ("high", {"think_budget": 5}, 5),  # the explicit option wins over the level
        (None, {"think_budget": 0}, 0),
    ],
)
@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
def test_ollama_think_levels_and_the_option(
    models: None, path: str, think: Any, options: Any, budget: int
) -> None:
    body: dict[str, Any] = {"model": "thinker", "stream": False, "think": think}
    body.update({"messages": ASK} if path == "/api/chat" else {"prompt": "Why?"})
    if options is not None:
        body["options"] = options
    job = job_of(path, body)
    assert job.options.think_budget == budget
    assert job.think == think


def test_a_modelfile_default_that_a_request_overrides(models: None) -> None:
    chat = {"model": "budgeted", "messages": ASK, "stream": False}
    assert job_of("/api/chat", chat).options.think_budget == 512
    assert job_of("/api/chat", {**chat, "think": "low"}).options.think_budget == 1024
    over = {**chat, "options": {"think_budget": 3}}
    assert job_of("/api/chat", over).options.think_budget == 3
    openai = {"model": "budgeted", "messages": ASK, "reasoning_effort": "minimal"}
    assert job_of("/v1/chat/completions", openai).options.think_budget == 256
    anthropic = {**messages(), "model": "budgeted"}
    assert job_of("/v1/messages", anthropic).options.think_budget == 512


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        (
            "/v1/messages",
            messages(thinking={"type": "enabled", "budget_tokens": -1}),
            "budget_tokens",
        ),
        (
            "/v1/chat/completions",
            {"model": "thinker", "messages": ASK, "reasoning_effort": "extreme"},
            "reasoning_effort",
        ),
        (
            "/v1/responses",
            {"model": "thinker", "input": "x", "reasoning": {"effort": "max"}},
            "effort",
        ),
        (
            "/api/chat",
            {"model": "thinker", "messages": ASK, "options": {"think_budget": -5}},
            "think_budget must be between 0 and",
        ),
        (
            "/api/chat",
            {"model": "thinker", "messages": ASK, "options": {"think_budget": "lots"}},
            "think_budget must be an integer",
        ),
        (
            "/v1/chat/completions",
            {"model": "thinker", "messages": ASK, "options": {"think_budget": 1.5}},
            "think_budget must be an integer",
        ),
        ("/api/chat", {"model": "thinker", "messages": ASK, "think": "xhigh"}, "think must be"),
    ],
)
def test_bad_budgets_are_a_400(models: None, path: str, body: dict[str, Any], message: str) -> None:
    factory = FakeFactory()
    status, [line] = call("POST", path, body, factory)
    assert status == 400, line
    error = json.loads(line)["error"]
    assert message in (error if isinstance(error, str) else error["message"]), error
    assert factory.runners == []  # refused before any load


def test_a_modelfile_budget_is_checked() -> None:
    assert parse_modelfile("FROM x\nPARAMETER think_budget 64\n").parameters == {"think_budget": 64}
    with pytest.raises(ModelfileError, match="think_budget must be between 0 and"):
        parse_modelfile("FROM x\nPARAMETER think_budget -3\n")


# ------------------------------------------------------------ the budget's counting

OPEN, CLOSE = "<think>", "</think>"
CLOSE_TOKENS = (901, 902)


def spend(budget: ThinkingBudget, pieces: list[bytes]) -> list[int]:
    """Feed ``pieces`` as sampled tokens (ids 1, 2, ...), taking the forced ones where
    the budget forces: the ids taken."""
    taken: list[int] = []
    pending = list(pieces)
    while pending or budget.forced() is not None:
        forced = budget.forced()
        if forced is not None:
            budget.accept(forced, b"</think>")
            taken.append(forced)
            continue
        piece = pending.pop(0)
        taken.append(len(taken) + 1)
        budget.accept(taken[-1], piece)
    return taken


def limit(tokens: int, *, opened: bool) -> ThinkingLimit:
    return ThinkingLimit(tokens, OPEN, CLOSE, CLOSE_TOKENS, opened)


def test_an_opened_block_is_closed_after_the_budget() -> None:
    budget = ThinkingBudget(limit(3, opened=True))
    taken = spend(budget, [b"a", b"b", b"c", b"d"])
    assert taken == [1, 2, 3, 901, 902, 6]  # three reasoning tokens, the close, then on
    assert budget.done and budget.forced_close and budget.used == 3


def test_counting_starts_at_the_opening_tag() -> None:
    budget = ThinkingBudget(limit(2, opened=False))
    taken = spend(budget, [b"Hi ", b"<th", b"ink>", b"x", b"y", b"z"])
    assert taken == [1, 2, 3, 4, 5, 901, 902, 8]


def test_a_natural_close_spends_nothing_more() -> None:
    budget = ThinkingBudget(limit(5, opened=True))
    taken = spend(budget, [b"a", b"</th", b"ink>", b"b", b"c", b"d", b"e", b"f"])
    assert 901 not in taken and budget.state is State.DONE and not budget.forced_close


def test_a_zero_budget_closes_at_once() -> None:
    assert ThinkingBudget(limit(0, opened=True)).forced() == 901
    budget = ThinkingBudget(limit(0, opened=False))
    assert spend(budget, [b"<think>", b"x"]) == [1, 901, 902, 4]


def test_a_character_is_finished_before_the_close() -> None:
    """A token that ends inside a UTF-8 character: the close waits for the rest."""
    snowman = "☃".encode()
    budget = ThinkingBudget(limit(1, opened=True))
    taken = spend(budget, [snowman[:2], snowman[2:], b"x"])
    assert taken == [1, 2, 901, 902, 5]
