"""The runner's token and template ops (engine/tokens.py, JobBuilder.render), in a real
runner process driven through scheduler/runner_client.py: the rendered prompt is, id
for id, what a generation of the same chat reads; tokenize and detokenize invert each
other; ids outside the vocabulary are refused without harming the runner."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from localserve.errors import InvalidOptionError
from localserve.runtime.options import LoadOptions
from localserve.runtime.protocol import GenerateJob, LoadRequest
from localserve.runtime.tokens import DetokenizeJob, TokenizeJob
from localserve.scheduler.runner_client import RunnerClient
from tests.support import chat_templates
from tests.support.jobs import collect
from tests.support.tiny_gguf import write_tiny_gguf

OPTIONS = LoadOptions(num_ctx=256, num_parallel=1, num_thread=2)
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there, ünïcödé 😀"},
]


def test_render_is_the_prompt_a_chat_reads_id_for_id(tmp_path: Path) -> None:
    """Rendered and tokenized (with the BOS), the text is the prompt part of the ids a
    generation returns as its ``context``, for a plain chat and with tools and thinking."""
    model = write_tiny_gguf(tmp_path / "qwen3.gguf", chat_template=chat_templates.QWEN3)
    tools = [{"type": "function", "function": {"name": "now", "parameters": {}}}]

    async def body() -> None:
        runner = await RunnerClient.start(LoadRequest((model,), OPTIONS))
        try:
            for extra in ({}, {"tools": tools}, {"think": True}, {"think": False}):
                chat = {"messages": CHAT, **extra}
                prompt = (await runner.render(GenerateJob.from_wire(chat))).prompt
                job = TokenizeJob(prompt, add_special=True)
                ids = (await runner.tokenize(job)).tokens
                request = {**chat, "want_context": True, "options": {"num_predict": 1}}
                _, done = await collect(runner, request)
                assert done["prompt_eval_count"] == len(ids), extra
                assert done["context"][: len(ids)] == ids, extra
                if extra.get("think") is False:
                    assert "<think>\n\n</think>" in prompt  # the switch reached the template
        finally:
            await runner.close()

    asyncio.run(asyncio.wait_for(body(), 120))


def test_tokenize_and_detokenize(tiny_gguf_path: Path) -> None:
    async def body() -> None:
        runner = await RunnerClient.start(LoadRequest((tiny_gguf_path,), OPTIONS))
        try:
            text = "Hello <|im_start|> wörld 😀"
            found = await runner.tokenize(TokenizeJob(text, with_pieces=True))
            assert found.pieces is not None and len(found.pieces) == len(found.tokens)
            joined = b"".join(p.encode() if isinstance(p, str) else bytes(p) for p in found.pieces)
            assert joined == text.encode()
            assert "<|im_start|>" in found.pieces  # one control token, read as itself
            spelled = await runner.tokenize(TokenizeJob(text, parse_special=False))
            assert len(spelled.tokens) > len(found.tokens)
            back = await runner.detokenize(DetokenizeJob(found.tokens))
            assert back.content == text
            mixed = await runner.tokenize(TokenizeJob(["a", 5, "b"], add_special=True))
            a = (await runner.tokenize(TokenizeJob("a", add_special=True))).tokens
            b = (await runner.tokenize(TokenizeJob("b"))).tokens
            assert mixed.tokens == [*a, 5, *b]
            for bad in ([-1], [runner.info.n_vocab], [2**40]):
                with pytest.raises(InvalidOptionError, match="not in the model's vocabulary"):
                    await runner.detokenize(DetokenizeJob(bad))
                with pytest.raises(InvalidOptionError, match="not in the model's vocabulary"):
                    await runner.tokenize(TokenizeJob(["x", *bad]))
            assert runner.alive and (await runner.detokenize(DetokenizeJob(a))).content
        finally:
            await runner.close()

    asyncio.run(asyncio.wait_for(body(), 120))
