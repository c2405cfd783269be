"""Liveness on a real daemon (issue 28): while Gemma 3 270M reads a long prompt, a
streamed /v1/completions request gets ``: ping`` comments and, asked for, llama-server's
``prompt_progress`` chunks; the official ``openai`` client reads such a stream as usual.

Reading ~1,000 tokens takes Gemma a second or more on this kind of machine, against pings every
20 ms: the pings are counted, never timed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.daemon import Daemon, running_daemon

pytestmark = pytest.mark.slow

PROMPT = " ".join(f"item {i} is on the list." for i in range(150))


@pytest.fixture(scope="module")
def gemma(tmp_path_factory: pytest.TempPathFactory, gemma_gguf_path: Path) -> Iterator[Daemon]:
    home = tmp_path_factory.mktemp("liveness") / "home"
    env = {"LOCALSERVE_STREAM_PING": "20ms", "LOCALSERVE_CONTEXT_LENGTH": "4096"}
    with running_daemon(home, gemma_gguf_path, env=env) as started:
        yield started


def test_a_long_prompt_is_read_with_pings_and_progress(gemma: Daemon) -> None:
    body = {
        "model": "tiny",  # the daemon's name for the model it was given
        "prompt": PROMPT,
        "max_tokens": 2,
        "temperature": 0,
        "stream": True,
        "return_progress": True,
        "stream_options": {"include_usage": True},
    }
    lines: list[str] = []
    with httpx.stream("POST", gemma.url + "/v1/completions", json=body, timeout=300) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    progress = [c["prompt_progress"] for c in chunks if "prompt_progress" in c]
    first_text = next(
        i for i, line in enumerate(lines) if '"text":"' in line and '"text":""' not in line
    )
    pings = [i for i, line in enumerate(lines) if line == ": ping"]
    assert (pings and max(pings) < first_text) or any(p < first_text for p in pings), lines[:20]
    usage = chunks[-1]["usage"]
    assert progress[0]["processed"] == 0
    assert progress[-1]["processed"] == usage["prompt_tokens"] - progress[-1]["cache"]
    assert all(p["total"] == usage["prompt_tokens"] for p in progress)
    assert usage["prompt_tokens"] > 700


def test_the_openai_client_reads_a_stream_with_pings(gemma: Daemon) -> None:
    with openai.OpenAI(base_url=gemma.url + "/v1", api_key="x", max_retries=0) as client:
        chunks = list(
            client.completions.create(
                model="tiny",
                prompt=PROMPT + " And one more.",
                max_tokens=3,
                temperature=0,
                stream=True,
                extra_body={"return_progress": True},
            )
        )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text and chunks[-1].choices[0].finish_reason == "length"
