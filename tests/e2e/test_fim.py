"""Fill-in-the-middle through a real daemon: ``suffix`` on /api/generate and
/v1/completions for a model whose vocabulary has FIM tokens, refused for one without."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import ollama
import openai
import pytest

from tests.support.daemon import Daemon, add_model
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


def test_openai_completions_with_suffix(daemon: Daemon, coder: str) -> None:
    with openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused") as client:
        completion = client.completions.create(
            model=coder, prompt=PREFIX, suffix=SUFFIX, max_tokens=5, temperature=0
        )
        assert completion.usage is not None and completion.usage.completion_tokens <= 5
        with pytest.raises(openai.BadRequestError, match="does not support insert"):
            client.completions.create(model="tiny", prompt=PREFIX, suffix=SUFFIX, max_tokens=2)
