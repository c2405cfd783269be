"""The thinking budget on a real model, in process: Gemma 3 270M with a real Qwen 3 style
template (Bielik 11B v3.0's: ChatML, <think> blocks, reasoning kept in the history).
Under greedy decoding the base model copies a few-shot history whose reasoning counts
out loud, so it thinks for dozens of tokens; a budget cuts that at its count, the
engine writes the template's closing tag, and the model answers after it.

Reasoning tokens are counted on the job's own output tokens: those wholly between the
opening tag (or the prompt's end, where the prompt opened the block) and the closing
tag. The same through the four wire APIs: tests/e2e/test_thinking_budget.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from localserve.engine.job import Job
from localserve.engine.loading import Loaded, Loader
from localserve.engine.prepare import JobBuilder
from localserve.runtime.options import LoadOptions, SamplingOptions
from localserve.runtime.protocol import GenerateJob, LoadRequest, TextEvent, ThinkingEvent
from tests.support import thinking_budget
from tests.support.thinking_budget import FEW_SHOT, STOP, reasoning_tokens

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def loaded(gemma_gguf_path: Path) -> Iterator[Loaded]:
    template = thinking_budget.TEMPLATE.read_text()
    options = LoadOptions(num_ctx=2048, num_parallel=2, num_thread=2)
    result = Loader().load(LoadRequest((gemma_gguf_path,), options, template=template))
    try:
        assert result.chat.thinking is not None
        assert (result.chat.thinking.open, result.chat.thinking.close) == ("<think>", "</think>")
        yield result
    finally:
        result.close()


@dataclass
class Answer:
    job: Job
    raw: str  # everything the model wrote (and the engine forced), tags included
    thinking: str  # the ThinkingEvents
    text: str  # the TextEvents
    reasoning_tokens: int


def run(loaded: Loaded, requests: dict[str, GenerateJob]) -> dict[str, Answer]:
    """Run the requests side by side (one batch) to their ends."""
    builder = JobBuilder(loaded)
    jobs = {name: builder.build(name, request)[0] for name, request in requests.items()}
    for job in jobs.values():
        loaded.engine.submit(job)
    thinking = dict.fromkeys(jobs, "")
    text = dict.fromkeys(jobs, "")
    for _ in range(10_000):
        if not loaded.engine.has_work():
            break
        for event in loaded.engine.step():
            if isinstance(event, ThinkingEvent):
                thinking[event.id] += event.text
            elif isinstance(event, TextEvent):
                text[event.id] += event.text
    assert not loaded.engine.has_work()
    answers = {}
    for name, job in jobs.items():
        opened = requests[name].think is True  # Bielik's prompt opens <think> for it
        pieces = [loaded.model.piece(t, special=True).decode() for t in job.output]
        answers[name] = Answer(
            job,
            "".join(pieces),
            thinking[name],
            text[name],
            reasoning_tokens(pieces, opened=opened),
        )
    return answers


def request(think: bool | None, budget: int) -> GenerateJob:
    options = SamplingOptions(temperature=0, num_predict=120, stop=tuple(STOP), think_budget=budget)
    return GenerateJob(messages=FEW_SHOT, think=think, options=options)


def test_the_budget_cuts_the_thinking_of_its_own_job_only(loaded: Loaded) -> None:
    """Two jobs in one batch, the model opening its block itself: the one with a budget
    thinks 8 tokens, the close is written once, then the answer; its neighbour, with
    none, counts on for far longer (so the budget is what cut it)."""
    answers = run(loaded, {"free": request(None, -1), "cut": request(None, 8)})
    assert loaded.engine.stats.max_jobs_in_step >= 2  # decoded together
    free, cut = answers["free"], answers["cut"]
    assert free.reasoning_tokens > 20, free.raw
    assert 1 <= cut.reasoning_tokens <= 8, cut.raw
    for answer in (free, cut):
        assert answer.raw.count("<think>") == 1 and answer.raw.count("</think>") == 1, answer.raw
        assert thinking_budget.ANSWER in answer.text, answer.raw
        assert "</think>" not in answer.text + answer.thinking
    # The cut thought is the start of the free one: the same model, greedy, cut short.
    assert free.thinking.startswith(cut.thinking.rstrip()), (free.thinking, cut.thinking)
    assert len(cut.thinking) < len(free.thinking) / 2


def test_a_block_the_prompt_opened(loaded: Loaded) -> None:
    """think: true makes Bielik's prompt end with <think>: the budget counts from the
    first token, and a zero budget closes the block before the model writes a word."""
    answers = run(loaded, {"cut": request(True, 8), "none": request(True, 0)})
    cut, none = answers["cut"], answers["none"]
    assert 1 <= cut.reasoning_tokens <= 8, cut.raw
    assert none.reasoning_tokens == 0 and none.raw.startswith("</think>"), none.raw
    assert none.thinking == ""
    for answer in (cut, none):
        assert answer.raw.count("</think>") == 1 and "<think>" not in answer.raw, answer.raw
        assert answer.text.strip(), answer.raw  # an answer follows the close
