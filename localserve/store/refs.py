"""Model names and digests: parsed, validated and normalised before anything becomes a path.

Forms a user may type::

    hf.co/OWNER/REPO[:TAG]          a Hugging Face repository (Ollama's form)
    huggingface.co/OWNER/REPO[:TAG] the same
    OWNER/REPO[:TAG]                shorthand for hf.co/OWNER/REPO
    NAME[:TAG]                      a local name made by `cp` or `import`

TAG defaults to ``latest``. For a Hugging Face repository it picks the file: a
quantization name (``Q4_K_M``, case-insensitive) or an exact ``.gguf`` file name;
``latest`` means "the default quantization" (see store/quants.py).

Everything here is pure: it refuses URL schemes, path separators inside a part,
``..``, NUL and other control characters, and over-long names, so that the parts can
be joined into store paths safely (the store checks the joined path again).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from localserve.errors import InvalidReferenceError

HF_HOST = "hf.co"
LOCAL_HOST = "local"
DEFAULT_TAG = "latest"
_HF_HOST_ALIASES = ("hf.co", "huggingface.co", "www.huggingface.co")

MAX_NAME_LENGTH = 300
# Hugging Face repo and owner names: letters, digits, '-', '_', '.', up to 96 characters,
# no leading/trailing separator, no '--' or '..' (the Hub's own rule).
_REPO_PART = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")
_LOCAL_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,126}[A-Za-z0-9])?$")
_TAG = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,127})$")
_DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, order=True)
class ModelRef:
    """A validated model name. ``host`` is ``hf.co`` or ``local``; ``path`` its parts."""

    host: str
    path: tuple[str, ...]
    tag: str = DEFAULT_TAG

    @property
    def is_hub(self) -> bool:
        return self.host == HF_HOST

    @property
    def repo_id(self) -> str:
        """``OWNER/REPO`` for a Hub reference."""
        if not self.is_hub:
            raise InvalidReferenceError(f"{self} is a local name, not a Hugging Face repository")
        return "/".join(self.path)

    @property
    def base(self) -> str:
        """The name without its tag."""
        if self.is_hub:
            return f"{HF_HOST}/{'/'.join(self.path)}"
        return "/".join(self.path)

    def with_tag(self, tag: str) -> ModelRef:
        _check_tag(tag, str(self))
        return ModelRef(self.host, self.path, tag)

    def __str__(self) -> str:
        return f"{self.base}:{self.tag}"


def _refuse(text: str, why: str) -> InvalidReferenceError:
    shown = text if len(text) <= 80 else text[:77] + "..."
    return InvalidReferenceError(
        f"invalid model name {shown!r}: {why}",
        hint="use hf.co/OWNER/REPO[:QUANT], OWNER/REPO[:QUANT] or NAME[:TAG]",
    )


def _check_tag(tag: str, whole: str) -> None:
    if not _TAG.match(tag) or ".." in tag:
        raise _refuse(whole, f"bad tag {tag!r} (letters, digits, '.', '_', '-'; up to 128)")


def parse_ref(text: str) -> ModelRef:
    """Parse and validate a model name a user typed; raises InvalidReferenceError."""
    if not isinstance(text, str) or not text.strip():
        raise _refuse(str(text), "empty")
    if len(text) > MAX_NAME_LENGTH:
        raise _refuse(text, f"longer than {MAX_NAME_LENGTH} characters")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise _refuse(text, "contains control characters")
    name = text.strip()
    if "://" in name or name.lower().startswith(("file:", "http:", "https:", "ftp:")):
        raise _refuse(name, "URLs are not model names; for a Hub repo use hf.co/OWNER/REPO")
    if "\\" in name or name.startswith("/") or name.startswith("~"):
        raise _refuse(name, "file paths are not model names; use `localserve import FILE NAME`")

    base, sep, tag = name.rpartition(":")
    if not sep:
        base, tag = name, DEFAULT_TAG
    elif "/" in tag:  # a ':' earlier in the name, e.g. "host:port/x": not ours
        raise _refuse(name, "unexpected ':'")
    if ":" in base:
        raise _refuse(name, "more than one ':'")
    _check_tag(tag, name)

    parts = base.split("/")
    if parts[0].lower() in _HF_HOST_ALIASES:
        parts = parts[1:]
        if len(parts) != 2:
            raise _refuse(name, "a Hugging Face name is hf.co/OWNER/REPO")
    if len(parts) == 2:
        for part in parts:
            if not _REPO_PART.match(part) or "--" in part or ".." in part:
                raise _refuse(name, f"bad repository part {part!r}")
        return ModelRef(HF_HOST, (parts[0], parts[1]), tag)
    if len(parts) == 1:
        if not _LOCAL_NAME.match(parts[0]) or ".." in parts[0]:
            raise _refuse(name, f"bad name {parts[0]!r} (letters, digits, '.', '_', '-')")
        return ModelRef(LOCAL_HOST, (parts[0],), tag)
    raise _refuse(name, "too many '/' (hf.co/OWNER/REPO, OWNER/REPO or NAME)")


def parse_digest(text: str) -> str:
    """``sha256:<hex>`` or ``sha256-<hex>`` or bare hex -> the 64 lowercase hex characters."""
    if not isinstance(text, str):
        raise InvalidReferenceError(f"invalid digest {text!r}")
    candidate = text.strip().strip('"').lower()
    match = _DIGEST.match(candidate)
    if match:
        return match.group(1)
    if _HEX64.match(candidate):
        return candidate
    shown = text if len(text) <= 80 else text[:77] + "..."
    raise InvalidReferenceError(f"invalid digest {shown!r}: expected sha256 and 64 hex digits")


_FILE_PART = re.compile(r"^[A-Za-z0-9_.+\-\[\]() ]{1,200}$")


def check_repo_filename(path: str) -> str:
    """A file path inside a Hub repository, as the Hub lists it; refuses traversal tricks.

    We never use it as a local path (blobs are named by digest), but it goes into URLs
    and manifests, so it must be boring.
    """
    if not path or len(path) > 1000 or path.startswith("/") or "\\" in path:
        raise InvalidReferenceError(f"refusing repository file name {path[:80]!r}")
    for part in path.split("/"):
        if part in ("", ".", "..") or not _FILE_PART.match(part):
            raise InvalidReferenceError(f"refusing repository file name {path[:80]!r}")
    return path
