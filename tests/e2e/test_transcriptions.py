"""Speech to text, ``/v1/audio/transcriptions``, against a real daemon serving the tiny
model with the tiny ``ultravox``-type audio projector, judged by the official
``openai`` client's ``audio.transcriptions.create``: every response format, the sound
in the prompt the model read, and the 400s for a model that cannot hear, a file that
is not a sound and formats that need timestamps. (The tiny model's words are
gibberish: its answers are checked for shape and counts, not meaning.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from localserve.schemas.audio import instruction
from tests.support.daemon import Daemon, add_model, running_daemon
from tests.support.media import AUDIO_TOKENS, png, sound
from tests.support.tiny_projector import write_tiny_audio_projector, write_tiny_projector

SHORT = {"max_tokens": 3}  # llama-server's field: the tiny model's gibberish, cut short


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, tiny_gguf_path: Path) -> Iterator[Daemon]:
    home = tmp_path_factory.mktemp("transcribe") / "localserve-home"
    folder = tmp_path_factory.mktemp("transcribe-files")
    with running_daemon(home, tiny_gguf_path) as started:
        add_model(home, tiny_gguf_path, "tiny-audio", write_tiny_audio_projector(folder / "a.gguf"))
        add_model(home, tiny_gguf_path, "tiny-vision", write_tiny_projector(folder / "v.gguf"))
        yield started


@pytest.fixture
def oai(daemon: Daemon) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused", timeout=120) as client:
        yield client


def test_json_transcription(oai: openai.OpenAI, daemon: Daemon) -> None:
    done = oai.audio.transcriptions.create(
        model="tiny-audio", file=("tone.wav", sound(440)), extra_body=SHORT
    )
    assert isinstance(done.text, str) and done.text == done.text.strip()
    usage = done.usage
    assert usage is not None and usage.type == "tokens"
    assert 1 <= usage.output_tokens <= 3
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    # The prompt the model read: the instruction's chat, and the sound's positions.
    with httpx.Client(base_url=daemon.url, timeout=60) as http:
        words = {"role": "user", "content": instruction(None, None)}
        asked = {"model": "tiny-audio", "messages": [words]}
        prompt = http.post("/apply-template", json=asked).json()["prompt"]
        tokenize = {"model": "tiny-audio", "content": prompt, "add_special": True}
        alone = http.post("/tokenize", json=tokenize).json()["tokens"]
    assert usage.input_tokens >= AUDIO_TOKENS + len(alone)


def test_language_and_prompt_go_into_the_instruction(oai: openai.OpenAI) -> None:
    def read(**fields: Any) -> int:
        done = oai.audio.transcriptions.create(
            model="tiny-audio", file=("tone.wav", sound(440)), extra_body=SHORT, **fields
        )
        assert done.usage is not None and done.usage.type == "tokens"
        return done.usage.input_tokens

    plain = read()
    assert read(language="de") > plain
    assert read(prompt="Words like Zyxel and Qwerty appear.") > plain


def test_text_and_verbose_json(oai: openai.OpenAI) -> None:
    text = oai.audio.transcriptions.create(
        model="tiny-audio", file=("tone.wav", sound(440)), response_format="text", extra_body=SHORT
    )
    assert isinstance(text, str)
    verbose = oai.audio.transcriptions.create(
        model="tiny-audio",
        file=("tone.wav", sound(440, seconds=1.5)),
        response_format="verbose_json",
        language="en",
        temperature=0,
        extra_body=SHORT,
    )
    assert verbose.duration == pytest.approx(1.5)
    assert verbose.language == "en" and isinstance(verbose.text, str)
    assert verbose.usage is not None and verbose.usage.type == "tokens"


@pytest.mark.parametrize(
    ("model", "data", "fields", "needle"),
    [
        ("tiny", sound(440), {}, "tiny does not support audio"),
        ("tiny-vision", sound(440), {}, "tiny-vision does not support audio"),
        ("tiny-audio", png(1), {}, "file is an image, not a sound"),
        ("tiny-audio", b"not a sound at all", {}, "not an image or sound"),
        ("tiny-audio", sound(440), {"response_format": "srt"}, "srt needs timestamps"),
        ("tiny-audio", sound(440), {"response_format": "vtt"}, "vtt needs timestamps"),
    ],
    ids=["text-model", "vision-model", "image", "junk", "srt", "vtt"],
)
def test_what_cannot_be_transcribed_is_a_400(
    oai: openai.OpenAI, model: str, data: bytes, fields: dict[str, Any], needle: str
) -> None:
    with pytest.raises(openai.BadRequestError, match=needle):
        oai.audio.transcriptions.create(model=model, file=("x.wav", data), **fields)
    # The daemon and the audio model's runner live on.
    done = oai.audio.transcriptions.create(
        model="tiny-audio", file=("tone.wav", sound(440)), extra_body=SHORT
    )
    assert done.usage is not None


def test_an_unknown_model_is_a_404(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="not found"):
        oai.audio.transcriptions.create(model="nothere", file=("x.wav", sound(440)))
