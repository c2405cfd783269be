"""Tokens, templates and transcriptions in-process: the pipe's new messages, the wire
schemas, and the routes over the scripted fake runner (tests/support/fake_runner.py),
whose ``tokenize`` gives a text's UTF-8 bytes as ids. The real model paths are in
tests/e2e/test_tokens.py and tests/e2e/test_transcriptions.py."""

from __future__ import annotations

import asyncio
import io
import struct
import wave
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from localserve.config import load_settings
from localserve.errors import InvalidOptionError
from localserve.runtime.options import SamplingOptions
from localserve.runtime.protocol import (
    GenerateJob,
    Op,
    Request,
    reply_to_wire,
)
from localserve.runtime.tokens import (
    Detokenized,
    DetokenizeJob,
    RenderedPrompt,
    TokenizeJob,
    Tokens,
)
from localserve.schemas.audio import check_format, instruction, seconds
from localserve.schemas.tokens import ApplyTemplateRequest, TokenizeRequest, TokenizeResponse
from localserve.server.app import create_app
from localserve.store.importing import import_gguf
from localserve.store.store import ModelStore
from tests.support import chat_templates
from tests.support.fake_runner import FakeFactory
from tests.support.media import png, sound
from tests.support.tiny_gguf import write_tiny_gguf
from tests.support.tiny_projector import write_tiny_audio_projector
from tests.unit.test_protocol import through_pipe

# ------------------------------------------------------------------ the pipe


@pytest.mark.parametrize(
    "request_",
    [
        Request(Op.TOKENIZE, "r1", TokenizeJob("hi", add_special=True, with_pieces=True)),
        Request(Op.TOKENIZE, "r2", TokenizeJob(["a", 5, "b"], parse_special=False)),
        Request(Op.DETOKENIZE, "r3", DetokenizeJob([1, 2, 3])),
        Request(Op.RENDER, "r4", GenerateJob(messages=[{"role": "user", "content": "x"}])),
    ],
)
def test_token_requests_come_back_as_sent(request_: Request) -> None:
    assert Request.from_wire(through_pipe(request_.to_wire())) == request_


def test_token_answers_come_back_as_sent() -> None:
    tokens = Tokens("r1", [1, 240], ["<s>", [240]])
    assert Tokens.from_wire(through_pipe(reply_to_wire(tokens))) == tokens
    text = Detokenized("r2", "hello \ufffd")
    assert Detokenized.from_wire(through_pipe(reply_to_wire(text))) == text
    prompt = RenderedPrompt("r3", "<|im_start|>user\nx<|im_end|>\n")
    assert RenderedPrompt.from_wire(through_pipe(reply_to_wire(prompt))) == prompt


@pytest.mark.parametrize(
    ("message", "needle"),
    [
        ({"op": "tokenize", "id": "r1", "job": {"content": 5}}, "content must be"),
        ({"op": "tokenize", "id": "r1", "job": {"content": ["a", True]}}, "content must be"),
        ({"op": "detokenize", "id": "r1", "job": {"tokens": "1 2"}}, "tokens must be"),
        ({"op": "detokenize", "id": "r1", "job": {"tokens": [1.5]}}, "tokens must be"),
        ({"op": "detokenize", "id": "r1", "job": {}}, "tokens must be"),
    ],
)
def test_malformed_token_jobs_are_refused(message: dict[str, Any], needle: str) -> None:
    with pytest.raises(InvalidOptionError, match=needle):
        Request.from_wire(message)


# ------------------------------------------------------------------ the schemas


def test_tokenize_bodies_are_llama_servers() -> None:
    plain = TokenizeRequest.model_validate({"content": "hi"})
    assert plain.model is None and plain.to_job() == TokenizeJob("hi")
    mixed = TokenizeRequest.model_validate({"content": ["a", 7], "add_special": True})
    assert mixed.to_job() == TokenizeJob(["a", 7], add_special=True)
    for bad in ({"content": 5}, {"content": [1.5]}, {"content": [True]}, {"with_pieces": "yes"}):
        with pytest.raises(ValidationError):
            TokenizeRequest.model_validate(bad)
    with pytest.raises(ValidationError, match="at least 1 character"):
        TokenizeRequest.model_validate({"model": ""})


def test_tokenize_answers_are_ids_or_pieces() -> None:
    assert TokenizeResponse.of(Tokens("r", [1, 2])).model_dump() == {"tokens": [1, 2]}
    pieces = TokenizeResponse.of(Tokens("r", [1, 240], ["<s>", [240]])).model_dump()
    assert pieces == {"tokens": [{"id": 1, "piece": "<s>"}, {"id": 240, "piece": [240]}]}


def test_apply_template_takes_a_chat_body_without_a_model() -> None:
    body = ApplyTemplateRequest.model_validate(
        {"messages": [{"role": "user", "content": "x"}], "reasoning_effort": "high"}
    )
    assert body.model is None and body.to_job(SamplingOptions()).think == "high"
    with pytest.raises(ValidationError):
        ApplyTemplateRequest.model_validate({"messages": []})


def test_transcription_instruction_and_formats() -> None:
    assert "Transcribe" in instruction(None, None)
    assert "in French" in instruction("French", None)
    assert "spelling of: Zyxel" in instruction(None, "Zyxel")
    for ok in ("json", "text", "verbose_json"):
        check_format(ok)
    with pytest.raises(InvalidOptionError, match="srt needs timestamps"):
        check_format("srt")
    with pytest.raises(InvalidOptionError, match="must be one of"):
        check_format("xml")


def flac_header(rate: int, samples: int) -> bytes:
    """A FLAC file's start: the marker and a STREAMINFO block."""
    packed = (rate << 44) | (0 << 41) | (15 << 36) | samples
    info = struct.pack(">HH", 4096, 4096) + b"\x00" * 6 + struct.pack(">Q", packed) + b"\x00" * 16
    return b"fLaC" + bytes([0x80, 0, 0, len(info)]) + info


def test_sound_lengths_from_headers() -> None:
    assert seconds(sound(440, seconds=0.5)) == pytest.approx(0.5)
    assert seconds(flac_header(16_000, 48_000)) == pytest.approx(3.0)
    assert seconds(b"ID3" + b"\x00" * 20) is None  # an MP3: unknown
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(8000)
    assert seconds(out.getvalue()) == 0.0
    assert seconds(b"RIFF\x00\x00\x00\x00WAVEjunk") is None


# ------------------------------------------------------------------ the routes


@pytest.fixture
def models(isolated_home: Path, tmp_path: Path) -> None:
    store = ModelStore(isolated_home / "models")
    for name, template in (("plain", chat_templates.CHATML_PLAIN), ("other", None)):
        path = write_tiny_gguf(tmp_path / f"{name}.gguf", chat_template=template)
        for _ in import_gguf(store, path, name):
            pass
    hearing = write_tiny_audio_projector(tmp_path / "audio.gguf")
    for _ in import_gguf(store, tmp_path / "plain.gguf", "hears", hearing):
        pass


Call = Callable[..., Coroutine[Any, Any, httpx.Response]]


def with_app(factory: FakeFactory, steps: Callable[[Call], Coroutine[Any, Any, None]]) -> None:
    """Run ``steps(call)`` against the app over ``factory``'s fake runners;
    ``call(method, path, **httpx keywords)`` sends one request."""
    app = create_app(load_settings(), runner_factory=factory)

    async def go() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:

                async def call(method: str, path: str, **kwargs: Any) -> httpx.Response:
                    return await c.request(method, path, **kwargs)

                await steps(call)

    asyncio.run(go())


def test_token_routes_shapes(models: None) -> None:
    async def steps(call: Call) -> None:
        answer = await call("POST", "/tokenize", json={"model": "plain", "content": "hé"})
        assert answer.json() == {"tokens": [104, 195, 169]}
        answer = await call(
            "POST", "/tokenize", json={"model": "plain", "content": "h", "with_pieces": True}
        )
        assert answer.json() == {"tokens": [{"id": 104, "piece": [104]}]}
        answer = await call("POST", "/detokenize", json={"model": "plain", "tokens": [104, 105]})
        assert answer.json() == {"content": "hi"}
        answer = await call("POST", "/api/tokenize", json={"model": "plain", "content": "hi"})
        assert answer.json() == {"model": "plain", "tokens": [104, 105]}
        answer = await call("POST", "/api/detokenize", json={"model": "plain", "tokens": [104]})
        assert answer.json() == {"model": "plain", "content": "h"}

    with_app(FakeFactory(), steps)


def test_the_model_may_be_left_out_while_exactly_one_is_loaded(models: None) -> None:
    factory = FakeFactory()

    async def steps(call: Call) -> None:
        for path, body in (("/tokenize", {"content": "x"}), ("/detokenize", {"tokens": [1]})):
            answer = await call("POST", path, json=body)
            assert answer.status_code == 400
            assert "model is required" in answer.json()["error"]
        assert not factory.loads  # nothing was loaded to find out
        await call("POST", "/api/generate", json={"model": "plain", "prompt": "", "stream": False})
        answer = await call("POST", "/tokenize", json={"content": "x"})
        assert answer.status_code == 200 and answer.json() == {"tokens": [120]}
        await call("POST", "/api/generate", json={"model": "other", "prompt": "", "stream": False})
        answer = await call("POST", "/tokenize", json={"content": "x"})
        assert answer.status_code == 400 and "model is required" in answer.json()["error"]

    with_app(factory, steps)


def test_tokens_use_the_loaded_runner_whatever_its_options(models: None) -> None:
    """A model loaded with other options than the defaults is not reloaded to count."""
    factory = FakeFactory()

    async def steps(call: Call) -> None:
        load = {"model": "plain", "prompt": "", "stream": False, "options": {"num_ctx": 64}}
        await call("POST", "/api/generate", json=load)
        for path, body in (
            ("/api/tokenize", {"model": "plain", "content": "x"}),
            ("/tokenize", {"model": "plain", "content": "x"}),
            ("/apply-template", {"model": "plain", "messages": [{"role": "user", "content": "x"}]}),
        ):
            answer = await call("POST", path, json=body)
            assert answer.status_code == 200, answer.text
        assert len(factory.loads) == 1 and factory.loads[0].options.num_ctx == 64

    with_app(factory, steps)


def test_apply_template_builds_the_chats_own_job(models: None) -> None:
    """The job rendered for /apply-template is the one /v1/chat/completions generates
    from (the runner renders both with the same code)."""
    factory = FakeFactory()
    body = {
        "model": "plain",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "x"}],
        "chat_template_kwargs": {"custom": 1},
        "max_tokens": 3,
    }

    async def steps(call: Call) -> None:
        answer = await call("POST", "/apply-template", json=body)
        assert answer.json() == {"prompt": "system: Be brief.\nuser: x"}
        await call("POST", "/v1/chat/completions", json=body)
        (runner,) = factory.runners
        rendered, generated = runner.counted[-1], runner.requests[-1]
        assert isinstance(rendered, GenerateJob) and rendered.template_kwargs == {"custom": 1}
        assert replace(rendered, progress=False) == replace(generated, progress=False)

    with_app(factory, steps)


def test_apply_template_refuses_what_the_chat_refuses(models: None) -> None:
    async def steps(call: Call) -> None:
        tools = [{"type": "function", "function": {"name": "f"}}]
        message = [{"role": "user", "content": "x"}]
        answer = await call(
            "POST", "/apply-template", json={"model": "other", "messages": message, "tools": tools}
        )
        assert answer.status_code == 400 and "other does not support tools" in answer.text
        answer = await call(
            "POST", "/apply-template", json={"model": "nothere", "messages": message}
        )
        assert answer.status_code == 404 and "not found" in answer.json()["error"]

    with_app(FakeFactory(), steps)


def transcribe(call: Call, model: str, data: bytes, **form: str) -> Any:
    return call(
        "POST",
        "/v1/audio/transcriptions",
        files={"file": ("sound.wav", data)},
        data={"model": model, **form},
    )


def test_transcriptions_are_a_chat_with_the_sound(models: None) -> None:
    factory = FakeFactory()

    async def steps(call: Call) -> None:
        answer = await transcribe(call, "hears", sound(440), language="German", prompt="Zyxel")
        assert answer.status_code == 200, answer.text
        assert answer.json() == {
            "text": "Hello world",
            "usage": {"type": "tokens", "input_tokens": 0, "output_tokens": 2, "total_tokens": 2},
        }
        (runner,) = factory.runners
        (message,) = runner.requests[-1].messages or []
        assert message["role"] == "user" and len(message["images"]) == 1
        assert "in German" in message["content"] and "Zyxel" in message["content"]
        assert runner.requests[-1].options.temperature == 0.0  # OpenAI's default
        assert runner.requests[-1].think is False  # a transcript, no reasoning first
        answer = await transcribe(call, "hears", sound(440), response_format="text")
        assert answer.headers["content-type"].startswith("text/plain")
        assert answer.text == "Hello world"
        answer = await transcribe(call, "hears", sound(440), response_format="verbose_json")
        verbose = answer.json()
        assert verbose["task"] == "transcribe" and verbose["duration"] == pytest.approx(0.5)

    with_app(factory, steps)


@pytest.mark.parametrize(
    ("model", "data", "form", "needle"),
    [
        ("plain", sound(440), {}, "plain does not support audio"),
        ("hears", png(1), {}, "file is an image, not a sound"),
        ("hears", b"hello", {}, "is not an image or sound"),
        ("hears", b"", {}, "file is empty"),
        ("hears", sound(440), {"response_format": "vtt"}, "vtt needs timestamps"),
        ("hears", sound(440), {"response_format": "xml"}, "must be one of"),
        ("hears", sound(440), {"temperature": "hot"}, "temperature"),
        ("hears", sound(440), {"temperature": "3"}, "temperature"),
        ("hears", sound(440), {"max_tokens": "0"}, "max_tokens"),
        ("hears", sound(440), {"stream": "true"}, "not supported"),
        ("../../etc/passwd", sound(440), {}, "invalid model name"),
        ("nothere", sound(440), {}, "not found"),
    ],
)
def test_bad_transcriptions_are_refused(
    models: None, model: str, data: bytes, form: dict[str, str], needle: str
) -> None:
    factory = FakeFactory()

    async def steps(call: Call) -> None:
        answer = await transcribe(call, model, data, **form)
        assert answer.status_code in (400, 404), answer.text
        assert needle in answer.json()["error"]["message"]
        assert not factory.runners  # refused before anything loaded
        answer = await call("POST", "/v1/audio/transcriptions", json={"model": "hears"})
        assert answer.status_code == 400 and "missing field 'file'" in answer.text

    with_app(factory, steps)
