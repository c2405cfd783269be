"""Sounds, on real llama.cpp in process: the tiny model with the tiny ``ultravox``-type
audio projector (tests/support/tiny_projector.py: any sound up to 30 s becomes 25
embeddings, with no text of its own around them), through the batching engine. Random
weights make garbage text, so the tests look at token counts, log-probabilities and the
engine's own counters. (tests/e2e/test_audio.py: the same over both APIs.)"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from localserve.engine.engine import Engine
from localserve.engine.job import Job
from localserve.engine.llama import Model
from localserve.engine.media import Projector
from localserve.engine.prompt import Prompt, PromptBuilder
from localserve.errors import InvalidOptionError
from localserve.runtime.options import LoadOptions, SamplingOptions
from localserve.runtime.protocol import DoneEvent, Event, LogprobsEvent
from tests.support.media import AUDIO_TOKENS, RATE, png, sound
from tests.support.tiny_gguf import write_tiny_gguf
from tests.support.tiny_projector import write_tiny_audio_projector

GREEDY = SamplingOptions(temperature=0.0, num_predict=4)


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
