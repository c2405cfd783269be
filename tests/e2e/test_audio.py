"""Sounds over both APIs against a real daemon serving the tiny model with the tiny
``ultravox``-type audio projector, judged by the official ``ollama`` and ``openai``
clients: token counts, show's capabilities, and the 400s for sounds and media a model
cannot read. (tests/engine/test_audio.py: the same model in process.)"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from localserve.engine.llama import Model
from tests.support.daemon import Daemon, add_model, running_daemon
from tests.support.media import AUDIO_TOKENS, RATE, assert_medium_is_read, png, sound
from tests.support.tiny_gguf import write_tiny_gguf
from tests.support.tiny_projector import write_tiny_audio_projector, write_tiny_projector


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Model]:
    loaded = Model([write_tiny_gguf(tmp_path_factory.mktemp("audio") / "tiny.gguf")])
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, tiny_gguf_path: Path) -> Iterator[Daemon]:
    home = tmp_path_factory.mktemp("audio-daemon") / "localserve-home"
    folder = tmp_path_factory.mktemp("audio-files")
    with running_daemon(home, tiny_gguf_path) as started:
        add_model(home, tiny_gguf_path, "tiny-audio", write_tiny_audio_projector(folder / "a.gguf"))
        add_model(home, tiny_gguf_path, "tiny-vision", write_tiny_projector(folder / "v.gguf"))
        wide = write_tiny_audio_projector(folder / "wide.gguf", text_embd=128)
        add_model(home, tiny_gguf_path, "tiny-audio-wide", wide)
        yield started


@pytest.fixture
def client(daemon: Daemon) -> Iterator[ollama.Client]:
    with ollama.Client(host=daemon.url, timeout=120) as client:
        yield client


@pytest.fixture
def oai(daemon: Daemon) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused", timeout=120) as client:
        yield client


OPTIONS = {"temperature": 0, "num_predict": 2}
ONE = {"temperature": 0, "num_predict": 1}


def test_show_lists_audio(client: ollama.Client, daemon: Daemon) -> None:
    capabilities = client.show("tiny-audio").capabilities or []
    assert "audio" in capabilities and "vision" not in capabilities
    assert "audio" not in (client.show("tiny-vision").capabilities or [])
    with httpx.Client() as http:
        shown = http.post(daemon.url + "/api/show", json={"model": "tiny-audio"}).json()
    assert shown["projector_info"]["clip.projector_type"] == "ultravox"
    assert shown["projector_info"]["clip.has_audio_encoder"] is True


def test_ollama_images_carry_wav_bytes(client: ollama.Client, tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    path.write_bytes(sound(440))
    plain = client.generate("tiny-audio", "Describe", options=OPTIONS)
    heard = client.generate("tiny-audio", "Describe", images=[str(path)], options=OPTIONS)
    assert plain.prompt_eval_count is not None and heard.prompt_eval_count is not None
    assert heard.prompt_eval_count >= plain.prompt_eval_count + AUDIO_TOKENS
    chat_plain = client.chat("tiny-audio", [{"role": "user", "content": "Hi"}], options=OPTIONS)
    chat_heard = client.chat(
        "tiny-audio",
        [{"role": "user", "content": "Hi", "images": [sound(880)]}],
        options=OPTIONS,
    )
    assert chat_plain.prompt_eval_count is not None and chat_heard.prompt_eval_count is not None
    assert chat_heard.prompt_eval_count >= chat_plain.prompt_eval_count + AUDIO_TOKENS
    assert chat_heard.done and chat_heard.message.role == "assistant"

    def first(medium: bytes) -> dict[str, float]:
        answer = client.generate(
            "tiny-audio", "Describe", images=[medium], options=ONE, logprobs=True, top_logprobs=5
        )
        assert answer.logprobs
        return {t.token: t.logprob for t in answer.logprobs[0].top_logprobs or []}

    assert_medium_is_read(first, sound(440), sound(0))


def test_openai_input_audio(oai: openai.OpenAI) -> None:
    def ask(content: object) -> int:
        done = oai.chat.completions.create(
            model="tiny-audio",
            messages=[{"role": "user", "content": content}],  # type: ignore[misc,list-item]
            max_tokens=2,
            temperature=0,
        )
        assert done.usage is not None
        return done.usage.prompt_tokens

    text_only = ask([{"type": "text", "text": "What is it?"}])
    heard = ask(
        [
            {"type": "text", "text": "What is it?"},
            {"type": "input_audio", "input_audio": {"data": b64(sound(440)), "format": "wav"}},
        ]
    )
    assert heard >= text_only + AUDIO_TOKENS

    def first(medium: bytes) -> dict[str, float]:
        part = {"type": "input_audio", "input_audio": {"data": b64(medium), "format": "wav"}}
        done = oai.chat.completions.create(
            model="tiny-audio",
            messages=[{"role": "user", "content": [part]}],  # type: ignore[misc,list-item]
            max_tokens=1,
            temperature=0,
            logprobs=True,
            top_logprobs=5,
        )
        logprobs = done.choices[0].logprobs
        assert logprobs is not None and logprobs.content
        return {t.token: t.logprob for t in logprobs.content[0].top_logprobs}

    assert_medium_is_read(first, sound(330), sound(660))


@pytest.mark.parametrize(
    ("model", "medium", "reason"),
    [
        ("tiny-audio", png(1), "tiny-audio does not support images"),
        ("tiny-vision", sound(440), "tiny-vision does not support audio"),
        ("tiny", sound(440), "tiny does not support audio"),
        ("tiny-audio", sound(440, seconds=1 / RATE), "sound 1 is too short"),
    ],
    ids=["image-to-audio", "sound-to-vision", "sound-to-text", "one-sample"],
)
def test_bad_sounds_and_media_the_model_cannot_read_are_400s(
    daemon: Daemon, model: str, medium: bytes, reason: str
) -> None:
    body = {"model": model, "prompt": "x", "images": [b64(medium)], "stream": False}
    with httpx.Client(timeout=60) as http:
        response = http.post(daemon.url + "/api/generate", json=body)
        assert response.status_code == 400, response.text
        assert reason in response.json()["error"]
        if model == "tiny-audio":  # its runner lives on
            body |= {"images": [b64(sound(440))], "options": {"num_predict": 1}}
            assert http.post(daemon.url + "/api/generate", json=body).status_code == 200


def test_openai_input_audio_to_a_vision_model_is_a_400(oai: openai.OpenAI) -> None:
    part = {"type": "input_audio", "input_audio": {"data": b64(sound(440)), "format": "wav"}}
    with pytest.raises(openai.BadRequestError, match="does not support audio"):
        oai.chat.completions.create(
            model="tiny-vision",
            messages=[{"role": "user", "content": [part]}],  # type: ignore[misc,list-item]
        )


def test_a_sound_projector_of_another_width_is_refused_at_load(daemon: Daemon) -> None:
    body = {"model": "tiny-audio-wide", "prompt": "x", "stream": False}
    with httpx.Client(timeout=120) as http:
        response = http.post(daemon.url + "/api/generate", json=body)
    assert response.status_code >= 400
    error = response.json()["error"]
    assert "width 128" in error and "64" in error
