"""Fill-in-the-middle through a real daemon: ``suffix`` on /api/generate and
/v1/completions for a model whose vocabulary has FIM tokens, refused for one without."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import ollama
import openai
import pytest

from localserve.engine.llama import Model
from tests.support.daemon import Daemon, add_model
from tests.support.logits import sequence_logprobs
from tests.support.tiny_gguf import write_tiny_gguf

PREFIX = "def add(a, b):\n    "

SUFFIX = "\n    return total\n"


@pytest.fixture(scope="module")
def fim_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("fim") / "coder.gguf", fim=True)


@pytest.fixture(scope="module")
def coder(daemon: Daemon, fim_path: Path) -> str:
    add_model(daemon.home, fim_path, "coder")
    return "coder"


@pytest.fixture
def client(daemon: Daemon) -> Iterator[ollama.Client]:
    with ollama.Client(host=daemon.url, timeout=60) as client:
        yield client


def test_generate_with_suffix(client: ollama.Client, coder: str) -> None:
    options = {"num_predict": 6, "temperature": 0}
    result = client.generate(coder, PREFIX, suffix=SUFFIX, options=options)
    assert result.done and result.eval_count and result.eval_count <= 6
    # The layout adds the three FIM tokens (and BOS) to the prompt's own tokens.
    plain = client.generate(coder, PREFIX + SUFFIX, raw=True, options=options)
    assert result.prompt_eval_count == (plain.prompt_eval_count or 0) + 3
    assert "insert" in (client.show(coder).capabilities or [])
    assert "insert" not in (client.show("tiny").capabilities or [])

    with pytest.raises(ollama.ResponseError, match="tiny does not support insert") as refused:
        client.generate("tiny", PREFIX, suffix=SUFFIX)
    assert refused.value.status_code == 400


def test_openai_completions_with_suffix(daemon: Daemon, coder: str, fim_path: Path) -> None:
    with openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused") as client:
        completion = client.completions.create(
            model=coder, prompt=PREFIX, suffix=SUFFIX, max_tokens=5, temperature=0
        )
        assert completion.usage is not None and completion.usage.completion_tokens <= 5
        # The prompt as the model read it: echo returns its tokens with their logprobs.
        scored = client.completions.create(
            model=coder, prompt=PREFIX, suffix=SUFFIX, max_tokens=0, echo=True, logprobs=0
        )
        with pytest.raises(openai.BadRequestError, match="does not support insert"):
            client.completions.create(model="tiny", prompt=PREFIX, suffix=SUFFIX, max_tokens=2)
    # The layout, rebuilt here: [BOS] <PRE> prefix <SUF> suffix <MID> (llama.cpp's order).
    model = Model([fim_path])
    try:
        fim = model.fim_tokens()
        assert fim is not None
        pre, suf, mid = fim
        expected = [
            model.bos,
            pre,
            *model.tokenize(PREFIX, add_special=False, parse_special=False),
            suf,
            *model.tokenize(SUFFIX, add_special=False, parse_special=False),
            mid,
        ]
        pieces = [model.piece(t).decode() for t in expected]
        reference = sequence_logprobs(model, expected)
    finally:
        model.close()
    logprobs = scored.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens is not None
    assert logprobs.tokens == pieces  # the marker tokens are control tokens: no text
    assert scored.usage is not None and scored.usage.prompt_tokens == len(expected)
    # Each token's logprob under the tokens before it: another order of the same pieces,
    # or a missing marker, would give other numbers.
    assert logprobs.token_logprobs is not None and logprobs.token_logprobs[0] is None
    assert logprobs.token_logprobs[1:] == pytest.approx(reference, abs=1e-3)
