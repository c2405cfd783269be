"""The default context on a real daemon (issue 28): with nothing set, Gemma 3 270M gets its
training length (32k) instead of a fixed 4096, `/api/ps` and `localserve ps` say why, and a
coding agent's opening prompt of over 4096 tokens is answered where it used to fail with
"the context holds 4096"."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from tests.support.cli import cli
from tests.support.daemon import Daemon, running_daemon

pytestmark = pytest.mark.slow

# Over 4,096 tokens of system prompt, as an agent's tools and rules would be.
SYSTEM = "You are a coding agent. " + " ".join(
    f"Tool {i} reads file number {i} and returns its lines." for i in range(370)
)


@pytest.fixture(scope="module")
def gemma(tmp_path_factory: pytest.TempPathFactory, gemma_gguf_path: Path) -> Iterator[Daemon]:
    home = tmp_path_factory.mktemp("default-context") / "home"
    with running_daemon(home, gemma_gguf_path) as started:  # no LOCALSERVE_CONTEXT_LENGTH
        yield started


def test_an_agents_long_first_prompt_is_answered(gemma: Daemon) -> None:
    with openai.OpenAI(base_url=gemma.url + "/v1", api_key="x", max_retries=0, timeout=600) as c:
        answer = c.chat.completions.create(
            model="tiny",
            messages=[
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": "Which tool reads file 7?"},
            ],
            max_tokens=2,
            temperature=0,
        )
    assert answer.usage is not None and answer.usage.prompt_tokens > 4096
    assert answer.choices[0].finish_reason == "length"
    running = httpx.get(gemma.url + "/api/ps").json()["models"]
    [model] = running
    assert (model["context_length"], model["context_reason"]) == (32768, "trained")
    shown = cli("ps", env={"LOCALSERVE_HOST": f"127.0.0.1:{gemma.port}"})
    assert shown.returncode == 0, shown.stderr
    assert "32768 (trained)" in shown.stdout


def test_embeddings_at_the_default_context(gemma: Daemon) -> None:
    """At 32k, a batch as long as the context would want 37 GB of llama.cpp's per-token
    logits, and every embedding failed with a 500: inputs are capped at 1024 tokens on
    Gemma (docs/engine.md, "Embeddings"). The real clients, as a RAG tool calls them."""
    with ollama.Client(host=gemma.url, timeout=600) as client:
        vectors = client.embed(model="tiny", input=["The sky is blue.", "The sea is wide."])
        assert len(vectors.embeddings) == 2 and vectors.embeddings[0] != vectors.embeddings[1]
        cut = client.embed(model="tiny", input="word " * 3000)  # truncate: the default
        assert cut.prompt_eval_count == 1024
        with pytest.raises(ollama.ResponseError, match="embeds at most 1024 tokens") as refused:
            client.embed(model="tiny", input="word " * 3000, truncate=False)
        assert refused.value.status_code == 400
    with openai.OpenAI(base_url=gemma.url + "/v1", api_key="x", max_retries=0, timeout=600) as c:
        same = c.embeddings.create(model="tiny", input="The sky is blue.")
    assert same.data[0].embedding == pytest.approx(vectors.embeddings[0], abs=1e-4)
