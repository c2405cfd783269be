"""The thinking budget through the four wire APIs, on a real daemon, with the official
clients: Gemma 3 270M with Bielik's real Qwen 3 style template and a few-shot history
that thinks by counting out loud (tests/support/thinking_budget.py), greedy.

Ollama's answer carries every generated token (``logprobs``), so its reasoning tokens
are counted exactly: over 20 without a budget, at most the budget with one. The other
APIs' answers, to the same prompt, must show the same cut thought, closed once (the
thinking ends, the answer follows, in a stream too). Each API sets the budget its own
way: Ollama's ``options.think_budget``, Anthropic's ``thinking.budget_tokens``, a
Modelfile's ``PARAMETER think_budget`` (OpenAI chat), the ``options`` extension
(Responses), whose ``reasoning.effort`` wins over a Modelfile's default.
(tests/engine/test_thinking_budget.py: the same in process; the mapping of each API's
fields: tests/unit/test_thinking_budget.py.)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import ollama
import openai
import pytest

from localserve.store.create import create_model
from localserve.store.modelfile import parse_modelfile
from localserve.store.store import ModelStore
from tests.e2e.test_tools_gemma import with_template
from tests.support.daemon import Daemon, add_model, running_daemon
from tests.support.thinking_budget import (
    ANSWER,
    CLOSE,
    FEW_SHOT,
    SHOTS,
    STOP,
    TEMPLATE,
    counted,
    reasoning_tokens,
)

pytestmark = pytest.mark.slow

MODEL = "gemma-bielik"
BUDGETED = "gemma-bielik-8"  # its Modelfile: PARAMETER think_budget 8
BUDGET = 8
NUM_PREDICT = 120


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, gemma_gguf_path: Path) -> Iterator[Daemon]:
    folder = tmp_path_factory.mktemp("thinking-budget")
    model = with_template(gemma_gguf_path, folder / "gemma-bielik.gguf", TEMPLATE.read_text())
    home = folder / "localserve-home"
    with running_daemon(home, env={"LOCALSERVE_CONTEXT_LENGTH": "2048"}) as started:
        add_model(home, model, MODEL)
        spec = parse_modelfile(f"FROM {MODEL}\nPARAMETER think_budget {BUDGET}\n")
        for _ in create_model(ModelStore(home / "models"), BUDGETED, spec, folder=folder):
            pass
        yield started


@dataclass(frozen=True)
class Reference:
    free: str  # the thought with no budget
    cut: str  # the thought with a budget of BUDGET tokens


@pytest.fixture(scope="module")
def reference(daemon: Daemon) -> Reference:
    """Ollama's /api/chat with think: true (the prompt opens the block), every token
    counted: the thought without a budget, and cut at BUDGET tokens."""
    history = [
        {"role": m["role"], "content": m["content"], "thinking": m.get("reasoning_content")}
        for m in FEW_SHOT
    ]
    thoughts = []
    with ollama.Client(host=daemon.url, timeout=300) as client:
        for budget in (None, BUDGET):
            options: dict[str, Any] = {"temperature": 0, "num_predict": NUM_PREDICT, "stop": STOP}
            if budget is not None:
                options["think_budget"] = budget
            result = client.chat(MODEL, history, think=True, options=options, logprobs=True)
            assert result.logprobs, result
            pieces = [entry.token for entry in result.logprobs]
            raw = "".join(pieces)
            assert raw.count(CLOSE) == 1 and "<think>" not in raw, raw
            assert ANSWER in result.message.content, raw
            assert CLOSE not in result.message.content + (result.message.thinking or "")
            count = reasoning_tokens(pieces, opened=True)
            if budget is None:
                assert count > 20, raw  # long enough for the budget to cut it
            else:
                assert 1 <= count <= budget, raw
            thoughts.append(result.message.thinking or "")
    free, cut = thoughts
    assert free.startswith(cut.rstrip()) and len(cut) < len(free) / 2, thoughts
    return Reference(free, cut)


def test_ollama_counts_the_cut_exactly(reference: Reference) -> None:
    assert reference.cut.strip() and counted(15).startswith(reference.cut.strip())


def test_anthropic_budget_tokens_streamed(daemon: Daemon, reference: Reference) -> None:
    """A thinking block that stops where the budget cut it, then a text block."""
    history: list[dict[str, Any]] = []
    for question, thought, answer in SHOTS:
        history.append({"role": "user", "content": question})
        blocks = [
            {"type": "thinking", "thinking": thought, "signature": "from-before"},
            {"type": "text", "text": answer},
        ]
        history.append({"role": "assistant", "content": blocks})
    history.append(FEW_SHOT[-1])
    with (
        anthropic.Anthropic(base_url=daemon.url, api_key="unused", timeout=300) as client,
        client.messages.stream(
            model=MODEL,
            max_tokens=NUM_PREDICT,
            messages=history,
            thinking={"type": "enabled", "budget_tokens": BUDGET},
            stop_sequences=STOP,
            extra_body={"temperature": 0},  # this SDK's stream() takes no temperature
        ) as stream,
    ):
        events = list(stream)
        message = stream.get_final_message()
    starts = [e.content_block.type for e in events if e.type == "content_block_start"]
    assert starts == ["thinking", "text"], events
    thinking, text = message.content
    assert thinking.type == "thinking" and thinking.thinking == reference.cut
    assert text.type == "text" and ANSWER in text.text, message
    assert CLOSE not in thinking.thinking + text.text


def test_openai_chat_with_a_modelfile_budget_streamed(daemon: Daemon, reference: Reference) -> None:
    """No budget in the request: the model's PARAMETER think_budget cuts the thought;
    the reasoning deltas end, the content deltas follow."""
    with openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused", timeout=300) as client:
        stream = client.chat.completions.create(
            model=BUDGETED,
            messages=FEW_SHOT,  # type: ignore[arg-type]  # reasoning_content: an extension
            temperature=0,
            max_tokens=NUM_PREDICT,
            stop=STOP,
            stream=True,
            extra_body={"chat_template_kwargs": {"enable_thinking": True}},
        )
        kinds: list[str] = []
        reasoning, content = "", ""
        for chunk in stream:
            if not chunk.choices:
                continue
            delta: Any = chunk.choices[0].delta
            if getattr(delta, "reasoning_content", None):
                reasoning += delta.reasoning_content
                kinds.append("reasoning")
            if delta.content:
                content += delta.content
                kinds.append("content")
    assert kinds and kinds == sorted(kinds, key=lambda k: k == "content"), kinds
    assert reasoning == reference.cut
    assert ANSWER in content and CLOSE not in content, content


def test_responses_budget_and_effort(daemon: Daemon, reference: Reference) -> None:
    """The ``options`` extension cuts the thought (here the model opens the block
    itself); ``reasoning.effort`` "minimal" (256 tokens) wins over the model's
    Modelfile budget of 8, so the thought runs its natural length."""
    items: list[dict[str, Any]] = []
    for question, thought, answer in SHOTS:
        items.append({"role": "user", "content": question})
        items.append(
            {
                "type": "reasoning",
                "summary": [],
                "content": [{"type": "reasoning_text", "text": thought}],
            }
        )
        items.append({"role": "assistant", "content": answer})
    items.append(FEW_SHOT[-1])
    with openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused", timeout=300) as client:
        cut = client.responses.create(
            model=MODEL,
            input=items,  # type: ignore[arg-type]
            temperature=0,
            max_output_tokens=NUM_PREDICT,
            store=False,
            extra_body={"options": {"think_budget": BUDGET, "stop": STOP}},
        )
        effort = client.responses.create(
            model=BUDGETED,
            input=items,  # type: ignore[arg-type]
            temperature=0,
            max_output_tokens=NUM_PREDICT,
            store=False,
            reasoning={"effort": "minimal"},
            extra_body={"options": {"stop": STOP}},
        )
    for response in (cut, effort):
        kinds = [item.type for item in response.output]
        assert kinds == ["reasoning", "message"], response.output
        assert ANSWER in response.output_text and CLOSE not in response.output_text
    thought = _reasoning(cut)
    assert thought.strip() and counted(15).startswith(thought.strip()), thought
    assert cut.usage is not None
    assert cut.usage.output_tokens_details.reasoning_tokens <= BUDGET
    assert _reasoning(effort) == reference.free


def _reasoning(response: Any) -> str:
    item = response.output[0]
    return "".join(part.text for part in item.content or [])
