"""Fill-in-the-middle: ``suffix`` on /api/generate and /v1/completions for a model
whose vocabulary has FIM tokens (a tiny model generated with them), refused for one
without."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import ollama
import openai
import pytest

from localserve.engine.llama import Model
from localserve.engine.prompt import PromptBuilder
from tests.support.daemon import Daemon, add_model, daemon
from tests.support.tiny_gguf import write_tiny_gguf

__all__ = ["daemon"]

PREFIX = "def add(a, b):\n    "
SUFFIX = "\n    return total\n"


@pytest.fixture(scope="module")
def fim_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("fim") / "coder.gguf", fim=True)


def test_prompt_layout_is_prefix_suffix_middle(fim_path: Path) -> None:
    model = Model([fim_path])
    try:
        fim = model.fim_tokens()
        assert fim is not None
        pre, suf, mid = fim
        tokens = PromptBuilder(model, None).infill(PREFIX, SUFFIX, num_ctx=512).tokens
        prefix = model.tokenize(PREFIX, add_special=False, parse_special=False)
        suffix = model.tokenize(SUFFIX, add_special=False, parse_special=False)
        assert tokens == [model.bos, pre, *prefix, suf, *suffix, mid]
        # Markers inside the code stay text: no second <fim_suffix> token.
        tricky = PromptBuilder(model, None).infill("x<fim_suffix>y", "", num_ctx=512).tokens
        assert tricky.count(suf) == 1
    finally:
        model.close()


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


def test_openai_completions_with_suffix(daemon: Daemon, coder: str) -> None:
    with openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused") as client:
        completion = client.completions.create(
            model=coder, prompt=PREFIX, suffix=SUFFIX, max_tokens=5, temperature=0
        )
        assert completion.usage is not None and completion.usage.completion_tokens <= 5
        with pytest.raises(openai.BadRequestError, match="does not support insert"):
            client.completions.create(model="tiny", prompt=PREFIX, suffix=SUFFIX, max_tokens=2)
