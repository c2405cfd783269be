"""Images and sounds in requests: checked at the door, before any model loads.

Both APIs send media as base64 bytes: Ollama's ``images`` (on /api/generate and
on chat messages), OpenAI's ``image_url`` parts with ``data:`` URLs and
``input_audio`` parts. The daemon never fetches a URL for a request: a server
that does can be made to reach hosts the client cannot (server-side request
forgery), so an ``http(s)://`` image is refused with what to send instead.

What is checked here, each a 400 with a one-line reason: base64 that does not
decode; bytes that are neither an image format llama.cpp decodes (stb_image) nor
a sound it decodes (miniaudio); a picture whose header claims more pixels than
``MAX_PIXELS`` (read from the header by Pillow, before anything is decoded); more
media than the daemon allows. Too many image tokens for the context is the
runner's to say: only it knows the projector's token count.
"""

from __future__ import annotations

import base64
import binascii
import io
import struct
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

from localserve.errors import InvalidOptionError
from localserve.runtime.protocol import GenerateJob

# Formats llama.cpp's stb_image decodes, by Pillow's names for them.
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TGA", "PPM", "PSD")
MAX_PIXELS = 64_000_000  # 8000 x 8000: beyond any projector's input, far beyond RAM sense
MAX_SIDE = 32_768


@dataclass(frozen=True)
class Medium:
    kind: str  # "image" or "audio"
    data: str  # base64, as the runner receives it


def decode_base64(item: object, where: str) -> bytes:
    if not isinstance(item, str):
        raise InvalidOptionError(f"{where} must be a base64 string")
    try:
        data = base64.b64decode("".join(item.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidOptionError(f"{where} is not valid base64") from None
    if not data:
        raise InvalidOptionError(f"{where} is empty")
    return data


def sniff(data: bytes, where: str) -> str:
    """``"image"`` or ``"audio"``, or a 400 saying what is wrong with the bytes."""
    if _is_audio(data):
        return "audio"
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow warns (and past twice its limit, raises) about decompression bombs;
            # the size check below is ours, with our own message.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:  # reads the header only
                kind, (width, height) = image.format, image.size
    except Image.DecompressionBombError:
        raise InvalidOptionError(
            f"{where} claims more pixels than the limit of {MAX_PIXELS:,}; scale it down"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, struct.error):
        # Pillow's header parsers raise any of these on bytes that only look like a format.
        raise InvalidOptionError(
            f"{where} is not an image or sound llama.cpp can read "
            f"(images: {', '.join(IMAGE_FORMATS)}; sound: WAV, MP3, FLAC)"
        ) from None
    if kind not in IMAGE_FORMATS:
        raise InvalidOptionError(
            f"{where} is a {kind} image; send one of {', '.join(IMAGE_FORMATS)}"
        )
    if width * height > MAX_PIXELS or max(width, height) > MAX_SIDE:
        raise InvalidOptionError(
            f"{where} is {width}x{height} pixels, over the limit of {MAX_PIXELS:,}; scale it down"
        )
    return "image"


def _is_audio(data: bytes) -> bool:
    return (
        (data[:4] == b"RIFF" and data[8:12] == b"WAVE")
        or data[:4] == b"fLaC"
        or data[:3] == b"ID3"
        or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0)  # an MP3 frame
    )


def check_media(items: Iterable[object], where: str) -> list[Medium]:
    """Ollama's ``images``: base64 strings, each checked."""
    result = []
    for number, item in enumerate(items):
        place = f"{where}[{number}]"
        data = decode_base64(item, place)
        result.append(Medium(sniff(data, place), base64.b64encode(data).decode("ascii")))
    return result


def from_url(url: object, where: str) -> str:
    """An OpenAI ``image_url``: a ``data:`` URL's base64 payload; any other URL refused."""
    if not isinstance(url, str) or not url:
        raise InvalidOptionError(f"{where}.url must be a string")
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("http", "https"):
        raise InvalidOptionError(
            f"{where} is an {scheme} URL: localserve does not fetch URLs; "
            "send the image's bytes as a data: URL (data:image/png;base64,...)"
        )
    header, comma, payload = url.partition(",")
    if scheme != "data" or not comma or not header.endswith(";base64"):
        raise InvalidOptionError(f"{where} must be a base64 data: URL (data:image/png;base64,...)")
    return payload


def media_kinds(job: GenerateJob) -> set[str]:
    """Which kinds of media a checked job carries (its base64 is known to be good)."""
    items = list(job.images) + [i for m in job.messages or () for i in m.get("images") or ()]
    # The first 16 base64 characters are 12 bytes: enough for the sound signatures.
    return {"audio" if _is_audio(base64.b64decode(i[:16])) else "image" for i in items}


def check_count(count: int, limit: int) -> None:
    if count > limit:
        raise InvalidOptionError(
            f"the request has {count} images, more than the {limit} allowed (LOCALSERVE_MAX_IMAGES)"
        )
