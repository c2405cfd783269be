"""Sounds and pictures made on the spot for the media tests: a sine-wave WAV, a noise PNG,
how many prompt positions the tiny audio projector gives a 30 s window, and the check
that a medium itself reached the model (through its first token's distribution)."""

from __future__ import annotations

import io
import math
import wave
from collections.abc import Callable

import numpy as np
from PIL import Image

AUDIO_TOKENS = 25  # per 30 s window: 1500 positions / stack factor 60

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


# What the first answer token's likeliest alternatives may differ by between two reads of
# the same prompt (a prefix-cache hit recomputes the last position: ~1e-7 here), and at
# least by between two different media (~1e-3 for the tiny projectors' noise pictures
# and tones).
SAME_MEDIUM = 1e-5
OTHER_MEDIUM = 1e-4


def first_token_distance(one: dict[str, float], two: dict[str, float]) -> float:
    """How far apart two first-token top lists (token -> logprob) are: the largest change
    of a token both list, infinite when they share none."""
    shared = one.keys() & two.keys()
    return max((abs(one[t] - two[t]) for t in shared), default=float("inf"))


def assert_medium_is_read(first: Callable[[bytes], dict[str, float]], a: bytes, b: bytes) -> None:
    """``first(medium)``: the first token's top logprobs of a request carrying it. The
    same medium twice gives the same distribution, another one a different one: the
    model read the medium itself, not only its placeholder positions."""
    one, again, other = first(a), first(a), first(b)
    assert one.keys() == again.keys(), (one, again)
    assert first_token_distance(one, again) < SAME_MEDIUM, (one, again)
    assert first_token_distance(one, other) > OTHER_MEDIUM, (one, other)
