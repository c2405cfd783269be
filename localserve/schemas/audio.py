"""OpenAI's ``/v1/audio/transcriptions`` on the wire: the instruction that turns a
sound into a chat, and the answers in each ``response_format``.

A transcription is a chat with the model (one whose projector takes sound): one user
turn carrying the file and an instruction to write down what is said, as llama-server
does it. OpenAI's ``prompt`` is text the speech may continue or whose spelling it
should follow; it goes into the instruction as such. srt and vtt need timestamps,
which a chat does not give: they are refused with what to ask for instead.
"""

from __future__ import annotations

import io
import struct
import wave
from typing import Literal

from localserve.errors import InvalidOptionError
from localserve.runtime.protocol import DoneEvent
from localserve.schemas.base import Response

INSTRUCTION = "Transcribe the audio to text. Answer with the transcript only."
FORMATS = ("json", "text", "verbose_json")
TIMED_FORMATS = ("srt", "vtt")


def instruction(language: str | None, prompt: str | None) -> str:
    """The user turn's text that goes with the sound."""
    text = INSTRUCTION
    if language:
        text += f" The speech is in {language}."
    if prompt:
        text += f" It may continue, or use the words and spelling of: {prompt}"
    return text


def check_format(response_format: str) -> None:
    if response_format in TIMED_FORMATS:
        raise InvalidOptionError(
            f"response_format {response_format} needs timestamps, which localserve's "
            "transcriptions do not have; use json, text or verbose_json"
        )
    if response_format not in FORMATS:
        raise InvalidOptionError(
            f"response_format must be one of json, text, verbose_json, not {response_format!r}"
        )


def seconds(data: bytes) -> float | None:
    """How long a WAV or FLAC sound lasts, from its header (None for other formats)."""
    if data[:4] == b"RIFF":
        try:
            with wave.open(io.BytesIO(data)) as sound:
                return float(sound.getnframes() / sound.getframerate())
        except (wave.Error, EOFError, ZeroDivisionError, struct.error):
            return None
    if data[:4] == b"fLaC" and len(data) >= 26:
        # STREAMINFO, the first metadata block: 20 bits of sample rate, then 3 of
        # channels, 5 of bits per sample and 36 of samples.
        (packed,) = struct.unpack(">Q", data[18:26])
        rate = packed >> 44
        samples = packed & ((1 << 36) - 1)
        return samples / rate if rate else None
    return None


class TranscriptionUsage(Response):
    type: Literal["tokens"] = "tokens"
    input_tokens: int
    output_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, done: DoneEvent | None) -> TranscriptionUsage:
        read = done.prompt_eval_count if done else 0
        written = done.eval_count if done else 0
        return cls(input_tokens=read, output_tokens=written, total_tokens=read + written)


class Transcription(Response):
    """``response_format`` json (the default)."""

    text: str
    usage: TranscriptionUsage


class TranscriptionVerbose(Response):
    """``response_format`` verbose_json: with the language asked for (none is
    detected) and the sound's length, where its header tells it."""

    task: Literal["transcribe"] = "transcribe"
    language: str
    duration: float | None = None
    text: str
    usage: TranscriptionUsage
