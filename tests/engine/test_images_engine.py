"""Images through the batching engine, in-process, on real llama.cpp: the tiny model
with the tiny gemma3-type projector (tests/support/tiny_projector.py: a 32x32 picture
becomes 4 embeddings). Random weights make garbage text, so the tests look at token
counts, log-probabilities and the engine's own counters."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from localserve.engine.engine import Engine
from localserve.engine.job import Job
from localserve.engine.llama import Model
from localserve.engine.media import Projector
from localserve.engine.prompt import Prompt, PromptBuilder
from localserve.errors import InvalidOptionError, PromptTooLongError
from localserve.runtime.options import LoadOptions, SamplingOptions
from localserve.runtime.protocol import DoneEvent, Event, LogprobsEvent
from tests.support.tiny_gguf import write_tiny_gguf
from tests.support.tiny_projector import write_tiny_projector

GREEDY = SamplingOptions(temperature=0.0, num_predict=8)
IMAGE_TOKENS = 4


def png(seed: int, side: int = 32) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Model]:
    loaded = Model([write_tiny_gguf(tmp_path_factory.mktemp("images") / "tiny.gguf")])
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def projector(model: Model, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Projector]:
    path = write_tiny_projector(tmp_path_factory.mktemp("proj") / "p.gguf", text_embd=model.n_embd)
    loaded = Projector(path, model, n_threads=2, use_gpu=False)
    yield loaded
    loaded.close()


@pytest.fixture
def engine(model: Model, projector: Projector) -> Iterator[Engine]:
    built = Engine(
        model, LoadOptions(num_ctx=256, num_parallel=4), n_threads=2, projector=projector
    )
    yield built
    built.close()


def builder(model: Model, projector: Projector | None) -> PromptBuilder:
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


def test_an_image_adds_its_tokens_to_the_prompt(
    model: Model, projector: Projector, engine: Engine
) -> None:
    chat = builder(model, projector)
    plain = chat.chat([{"role": "user", "content": "What is this?"}], num_ctx=256)
    seen = chat.chat(
        [{"role": "user", "content": "What is this?"}], num_ctx=256, images={0: [png(1)]}
    )
    assert not plain.media and len(seen.media) == 1
    (start, chunk) = next(iter(seen.media.items()))
    assert chunk.kind == "image" and chunk.n_tokens == chunk.n_pos == IMAGE_TOKENS
    assert all(t < 0 for t in seen.tokens[start : start + IMAGE_TOKENS])
    assert all(t >= 0 for t in plain.tokens)
    engine.submit(job("plain", plain))
    engine.submit(job("seen", seen))
    done, _ = run(engine)
    # mtmd wraps the image in the projector's begin/end tokens: text around it grows too.
    assert done["seen"].prompt_eval_count >= done["plain"].prompt_eval_count + IMAGE_TOKENS
    assert done["seen"].prompt_eval_count == len(seen.tokens)
    assert done["seen"].done_reason in ("stop", "length")
    assert engine.stats.media_encoded == 1


def test_different_images_give_different_distributions(
    model: Model, projector: Projector, engine: Engine
) -> None:
    chat = builder(model, projector)
    firsts = []
    for seed in (1, 2):
        prompt = chat.completion("Describe", system=None, raw=True, num_ctx=256, images=[png(seed)])
        engine.submit(
            job(f"img{seed}", prompt, SamplingOptions(temperature=0.0, num_predict=1), logprobs=5)
        )
        _, steps = run(engine)
        entries = [e for s in steps for e in s if isinstance(e, LogprobsEvent)]
        firsts.append(entries[0].entries[0])
    one, two = firsts
    assert [t["logprob"] for t in one["top_logprobs"]] != [
        t["logprob"] for t in two["top_logprobs"]
    ]


def test_the_same_image_next_turn_is_not_encoded_again(
    model: Model, projector: Projector, engine: Engine
) -> None:
    chat = builder(model, projector)
    picture = png(3)
    turn1 = [{"role": "user", "content": "What is this?"}]
    first = chat.chat(turn1, num_ctx=256, images={0: [picture]})
    engine.submit(job("t1", first))
    done, _ = run(engine)
    assert engine.stats.media_encoded == 1
    turn2 = [
        *turn1,
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "Sure?"},
    ]
    second = chat.chat(turn2, num_ctx=256, images={0: [picture]})
    engine.submit(job("t2", second))
    done, _ = run(engine)
    assert engine.stats.media_encoded == 1  # its cells came from the prefix cache
    assert done["t2"].prompt_cached > next(iter(second.media)) + IMAGE_TOKENS
    # Another picture in the same place is encoded: the cache knows media by their bytes.
    third = chat.chat(turn2, num_ctx=256, images={0: [png(4)]})
    engine.submit(job("t3", third))
    done, _ = run(engine)
    assert engine.stats.media_encoded == 2
    assert done["t3"].prompt_cached <= next(iter(third.media))


def test_other_streams_keep_flowing_while_images_are_encoded(
    model: Model, projector: Projector, engine: Engine
) -> None:
    chat = builder(model, projector)
    text_only = chat.completion("Once upon a time", system=None, raw=True, num_ctx=256)
    long_answer = SamplingOptions(temperature=0.0, num_predict=40, ignore_eos=True)
    engine.submit(job("stream", text_only, long_answer))
    while not engine.jobs["stream"].generating:
        engine.step()
    pictures = [png(i) for i in range(10, 16)]
    many = chat.completion("Compare", system=None, raw=True, num_ctx=256, images=pictures)
    engine.submit(job("images", many))
    encoding_steps = streamed_during_encoding = 0
    done: dict[str, DoneEvent] = {}
    while engine.has_work():
        before = engine.stats.media_encoded
        stream = engine.jobs.get("stream")
        generated = stream.generated if stream else 0
        events = engine.step()
        done.update({e.id: e for e in events if isinstance(e, DoneEvent)})
        if engine.stats.media_encoded > before:
            assert engine.stats.media_encoded == before + 1  # one medium a step
            encoding_steps += 1
            streamed_during_encoding += stream is not None and stream.generated > generated
    assert encoding_steps == 6
    # The stream got its token in every step that encoded an image (it never waited
    # for all six), and it finished its whole answer.
    assert streamed_during_encoding == 6
    assert done["stream"].eval_count == 40
    assert done["images"].prompt_eval_count == len(many.tokens)


def test_a_model_without_a_projector_refuses_images(model: Model) -> None:
    with pytest.raises(InvalidOptionError, match="does not support images"):
        builder(model, None).chat(
            [{"role": "user", "content": "hi"}], num_ctx=256, images={0: [png(1)]}
        )


def test_undecodable_bytes_are_refused(model: Model, projector: Projector) -> None:
    with pytest.raises(InvalidOptionError, match="image 1 could not be decoded"):
        builder(model, projector).completion(
            "x", system=None, raw=True, num_ctx=256, images=[b"\x89PNG\r\n\x1a\n garbage"]
        )


def test_too_many_image_tokens_for_the_context(model: Model, projector: Projector) -> None:
    with pytest.raises(PromptTooLongError, match="with its images"):
        builder(model, projector).completion(
            "x", system=None, raw=True, num_ctx=32, images=[png(i) for i in range(8)]
        )


def test_the_default_marker_in_user_text_stays_text(model: Model, projector: Projector) -> None:
    prompt = builder(model, projector).chat(
        [{"role": "user", "content": "see <__media__> here"}], num_ctx=256
    )
    assert not prompt.media and all(t >= 0 for t in prompt.tokens)
