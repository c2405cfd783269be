"""Sounds and pictures made on the spot for the media tests: a sine-wave WAV, a noise PNG,
and how many prompt positions the tiny audio projector gives a 30 s window."""

from __future__ import annotations

import io
import math
import wave

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
