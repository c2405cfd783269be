"""Sounds, on real llama.cpp: the tiny model with the tiny ``ultravox``-type audio
projector (tests/support/tiny_projector.py: any sound up to 30 s becomes 25
embeddings, with no text of its own around them). In-process through the batching
engine first, then over both APIs against a real daemon, judged by the official
``ollama`` and ``openai`` clients. Random weights make garbage text, so the tests look
at token counts, log-probabilities and the engine's own counters."""

from __future__ import annotations

import base64
import io
import math
import wave
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import ollama
import openai
import pytest
from PIL import Image

from localserve.engine.engine import Engine
from localserve.engine.job import Job
from localserve.engine.llama import Model
from localserve.engine.media import Projector
from localserve.engine.prompt import Prompt, PromptBuilder
from localserve.errors import InvalidOptionError
from localserve.runtime.options import LoadOptions, SamplingOptions
from localserve.runtime.protocol import DoneEvent, Event, LogprobsEvent
from tests.support.daemon import Daemon, add_model, running_daemon
from tests.support.tiny_gguf import write_tiny_gguf
from tests.support.tiny_projector import write_tiny_audio_projector, write_tiny_projector

AUDIO_TOKENS = 25  # per 30 s window: 1500 positions / stack factor 60
GREEDY = SamplingOptions(temperature=0.0, num_predict=4)
RATE = 16_000


def sound(freq: float, seconds: float = 0.5, rate: int = RATE) -> bytes:
    """A mono 16-bit WAV of a sine wave (``freq`` 0: a rising sweep instead)."""
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * math.pi * (freq * t if freq else 200 * t + 1000 * t * t)
    samples = (np.sin(phase) * 12_000).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(samples.tobytes())
    return out.getvalue()


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# In-process, through the batching engine.


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Model]:
    loaded = Model([write_tiny_gguf(tmp_path_factory.mktemp("audio") / "tiny.gguf")])
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def projector(model: Model, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Projector]:
    folder = tmp_path_factory.mktemp("audio-proj")
    path = write_tiny_audio_projector(folder / "a.gguf", text_embd=model.n_embd)
    loaded = Projector(path, model, n_threads=2, use_gpu=False)
    yield loaded
    loaded.close()


@pytest.fixture
def engine(model: Model, projector: Projector) -> Iterator[Engine]:
    built = Engine(
        model, LoadOptions(num_ctx=256, num_parallel=2), n_threads=2, projector=projector
    )
    yield built
    built.close()


def builder(model: Model, projector: Projector) -> PromptBuilder:
    return PromptBuilder(model, model.chat_template(), projector)


def job(job_id: str, prompt: Prompt, options: SamplingOptions = GREEDY, **kw: object) -> Job:
    return Job(job_id, prompt.tokens, options, media=prompt.media, **kw)  # type: ignore[arg-type]


def run(engine: Engine) -> tuple[dict[str, DoneEvent], list[list[Event]]]:
    done: dict[str, DoneEvent] = {}
    steps: list[list[Event]] = []
    for _ in range(10_000):
        if not engine.has_work():
            break
        events = engine.step()
        steps.append(events)
        done.update({e.id: e for e in events if isinstance(e, DoneEvent)})
    return done, steps


def test_the_projector_reads_sounds_only(projector: Projector) -> None:
    assert projector.capabilities == ["audio"]


def test_a_sound_adds_its_tokens_to_the_prompt(
    model: Model, projector: Projector, engine: Engine
) -> None:
    chat = builder(model, projector)
    plain = chat.chat([{"role": "user", "content": "What is this?"}], num_ctx=256)
    heard = chat.chat(
        [{"role": "user", "content": "What is this?"}], num_ctx=256, images={0: [sound(440)]}
    )
    assert not plain.media and len(heard.media) == 1
    (start, chunk) = next(iter(heard.media.items()))
    assert chunk.kind == "audio" and chunk.n_tokens == chunk.n_pos == AUDIO_TOKENS
    assert all(t < 0 for t in heard.tokens[start : start + AUDIO_TOKENS])
    assert sum(t < 0 for t in heard.tokens) == AUDIO_TOKENS
    engine.submit(job("plain", plain))
    engine.submit(job("heard", heard))
    done, _ = run(engine)
    assert done["heard"].prompt_eval_count >= done["plain"].prompt_eval_count + AUDIO_TOKENS
    assert done["heard"].prompt_eval_count == len(heard.tokens)
    assert done["heard"].done_reason in ("stop", "length")
    assert engine.stats.media_encoded == 1


def test_a_sound_over_30_seconds_is_two_windows(
    model: Model, projector: Projector, engine: Engine
) -> None:
    prompt = builder(model, projector).completion(
        "Listen", system=None, raw=True, num_ctx=256, images=[sound(330, seconds=31)]
    )
    assert [c.n_tokens for c in prompt.media.values()] == [AUDIO_TOKENS, AUDIO_TOKENS]
    engine.submit(job("long", prompt))
    done, _ = run(engine)
    assert engine.stats.media_encoded == 2
    assert done["long"].prompt_eval_count == len(prompt.tokens)


def test_different_sounds_give_different_distributions(
    model: Model, projector: Projector, engine: Engine
) -> None:
    chat = builder(model, projector)
    firsts = []
    for number, freq in enumerate((440, 0)):
        prompt = chat.completion(
            "Describe", system=None, raw=True, num_ctx=256, images=[sound(freq)]
        )
        one_token = SamplingOptions(temperature=0.0, num_predict=1)
        engine.submit(job(f"sound{number}", prompt, one_token, logprobs=5))
        _, steps = run(engine)
        entries = [e for s in steps for e in s if isinstance(e, LogprobsEvent)]
        firsts.append([t["logprob"] for t in entries[0].entries[0]["top_logprobs"]])
    assert firsts[0] != firsts[1]


def test_the_same_sound_next_turn_is_not_encoded_again(
    model: Model, projector: Projector, engine: Engine
) -> None:
    chat = builder(model, projector)
    heard = sound(523)
    turn1 = [{"role": "user", "content": "What is this?"}]
    first = chat.chat(turn1, num_ctx=256, images={0: [heard]})
    engine.submit(job("t1", first))
    run(engine)
    assert engine.stats.media_encoded == 1
    turn2 = [
        *turn1,
        {"role": "assistant", "content": "A bell."},
        {"role": "user", "content": "Sure?"},
    ]
    second = chat.chat(turn2, num_ctx=256, images={0: [heard]})
    engine.submit(job("t2", second))
    done, _ = run(engine)
    assert engine.stats.media_encoded == 1  # its cells came from the prefix cache
    assert done["t2"].prompt_cached > next(iter(second.media)) + AUDIO_TOKENS
    # Another sound in the same place is encoded: the cache knows media by their bytes.
    third = chat.chat(turn2, num_ctx=256, images={0: [sound(524)]})
    engine.submit(job("t3", third))
    done, _ = run(engine)
    assert engine.stats.media_encoded == 2
    assert done["t3"].prompt_cached <= next(iter(third.media))


def test_an_image_to_an_audio_only_projector_is_refused(model: Model, projector: Projector) -> None:
    with pytest.raises(InvalidOptionError, match="does not support images"):
        builder(model, projector).completion(
            "x", system=None, raw=True, num_ctx=256, images=[png(1)]
        )


def test_a_sound_of_one_sample_is_refused(model: Model, projector: Projector) -> None:
    # mtmd aborts the process on it (GGML_ASSERT in mtmd_tokenize): it must be a 400.
    with pytest.raises(InvalidOptionError, match="sound 1 is too short"):
        builder(model, projector).completion(
            "x", system=None, raw=True, num_ctx=256, images=[sound(440, seconds=1 / RATE)]
        )
    assert (
        builder(model, projector)
        .completion("x", system=None, raw=True, num_ctx=256, images=[sound(440, seconds=2 / RATE)])
        .media
    )


# Over both APIs, against a real daemon.


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
