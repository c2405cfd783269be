"""Log-probabilities (engine/logprobs.py) against a log-softmax computed here, in float64,
from the raw logits of a context this test decodes itself (engine/llama.py's
``Context.logits``), on two tiny models: the usual one, whose logits all lie within a nat
or two of each other, and one with output weights 100 times larger, whose logits spread
over ~100 nats, so that fewer than 20 tokens lie within 12 nats of the peak and the top
list comes from the fallback, a partition of the whole vocabulary."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from localserve.engine.engine import Engine
from localserve.engine.job import Job
from localserve.engine.llama import Model
from localserve.engine.logprobs import _NEAR, MAX_TOP, token_logprob
from localserve.runtime.options import LoadOptions, SamplingOptions
from localserve.runtime.protocol import LogprobsEvent
from tests.support.logits import log_softmax, raw_logits
from tests.support.tiny_gguf import write_tiny_gguf

PROMPT = "Once upon a time there was a model that wrote the answer"
SCALES = {"narrow": 1.0, "wide": 100.0}


@pytest.fixture(scope="module", params=list(SCALES))
def model(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Model]:
    folder: Path = tmp_path_factory.mktemp("logprobs")
    path = write_tiny_gguf(folder / f"{request.param}.gguf", output_scale=SCALES[request.param])
    loaded = Model([path])
    yield loaded
    loaded.close()


def near_peak(logits: np.ndarray[Any, Any]) -> int:
    """How many tokens lie within _NEAR nats of the peak: under the top count asked, the
    top list is the fallback's."""
    return int((logits > logits.max() - _NEAR).sum())


def assert_entry(model: Model, entry: dict[str, Any], reference: np.ndarray[Any, Any], token: int,
                 top: int, tolerance: float) -> None:  # fmt: skip
    """``entry`` says what ``reference`` (a log-softmax) says of ``token`` and its top."""
    assert entry["bytes"] == list(model.piece(token))
    assert entry["logprob"] == pytest.approx(reference[token], abs=tolerance)
    best = sorted(range(len(reference)), key=lambda t: -reference[t])[:top]
    listed = entry["top_logprobs"]
    assert [t["logprob"] for t in listed] == pytest.approx(
        [reference[t] for t in best], abs=tolerance
    )
    # Ties aside (none in these models), the same tokens, in the same order.
    assert [t["bytes"] for t in listed] == [list(model.piece(t)) for t in best]
    assert [t["token"] for t in listed] == [model.piece(t).decode("utf-8", "replace") for t in best]


def test_token_logprob_is_the_log_softmax_of_the_logits(model: Model) -> None:
    tokens = model.tokenize(PROMPT, add_special=True)
    logits = raw_logits(model, tokens)
    spread = float(np.min(logits.max(axis=1) - logits.min(axis=1)))
    for row in range(len(tokens) - 1):
        row_logits = logits[row].astype(np.float32)
        reference = log_softmax(logits[row])
        following = tokens[row + 1]
        for top in (0, 1, 5, MAX_TOP):
            entry = token_logprob(model, row_logits, following, top)
            assert_entry(model, entry, reference, following, top, tolerance=1e-5)
        # Which branch the top list took: the near-peak partition, or the fallback.
        if spread > 3 * _NEAR:
            assert near_peak(row_logits) < MAX_TOP, "the wide model must take the fallback"
        else:
            assert near_peak(row_logits) == model.n_vocab
        # The probabilities add up to one.
        assert np.exp(reference).sum() == pytest.approx(1.0)


def test_the_engine_reports_each_token_under_the_logits_it_was_drawn_from(model: Model) -> None:
    """Prompt tokens (echo) and sampled ones, through the batching loop: each entry is the
    log-softmax of the right row of logits, recomputed here from the whole sequence."""
    prompt = model.tokenize(PROMPT, add_special=True)
    options = SamplingOptions(temperature=1.5, seed=11, num_predict=12, ignore_eos=True)
    engine = Engine(model, LoadOptions(num_ctx=256, num_parallel=2), n_threads=2)
    job = Job("j", prompt, options, None, logprobs=5, prompt_logprobs=True)
    echoed: list[dict[str, Any]] = []
    sampled: list[dict[str, Any]] = []
    try:
        engine.submit(job)
        while engine.has_work():
            for event in engine.step():
                if isinstance(event, LogprobsEvent):
                    (echoed if event.prompt else sampled).extend(event.entries)
    finally:
        engine.close()
    output = list(job.output)
    assert len(output) == len(sampled) == 12
    assert len(echoed) == len(prompt) and echoed[0]["logprob"] is None
    logits = raw_logits(model, prompt + output)
    sequence = prompt + output
    # Row i predicts token i + 1: the prompt's after the first, then every sampled one.
    # (One decode here, a prefill and single steps there: float sums in another order.)
    for position in range(1, len(sequence)):
        entry = echoed[position] if position < len(prompt) else sampled[position - len(prompt)]
        reference = log_softmax(logits[position - 1])
        assert_entry(model, entry, reference, sequence[position], 5, tolerance=2e-3)
