"""Which GGUF file(s) of a Hub repository a tag means.

A GGUF repository usually holds one file per quantization
(``model-Q4_K_M.gguf``, ``model-Q8_0.gguf``...), sometimes split into parts
(``model-Q8_0-00001-of-00003.gguf``) or kept in a folder per quantization
(``Q8_0/model-Q8_0-00001-of-00002.gguf``). The tag picks one model:

- an exact file name (``model-Q8_0.gguf``, or the first part of a split model);
- a quantization name, case-insensitive (``Q4_K_M``, ``q8_0``, ``IQ3_M``);
- ``latest`` (no tag): the first quantization of DEFAULT_PREFERENCE that exists,
  else the smallest model in the repository.

Multimodal projectors (``mmproj-*.gguf``) are never picked as the model; the one that
goes with the chosen model is picked by ``choose_projector``, llama.cpp's rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from localserve.errors import NoSuchFileError
from localserve.store.refs import DEFAULT_TAG

# Why this order: Q4_K_M is the community's default (Ollama's too) balance of size and
# quality; then its nearest neighbours in quality per byte, then the bigger, then the
# smaller quantizations, then unquantized. A repo with none of these falls back to its
# smallest model.
DEFAULT_PREFERENCE = (
    "Q4_K_M", "Q4_K_S", "IQ4_XS", "IQ4_NL", "Q5_K_M", "Q4_0", "Q5_K_S", "Q6_K", "Q8_0",
    "Q3_K_L", "Q3_K_M", "IQ3_M", "Q3_K_S", "IQ3_XS", "IQ3_XXS", "Q2_K", "Q2_K_L",
    "BF16", "F16", "F32",
)  # fmt: skip

# Quantization names as they appear in file names: IQ and K-quants with their size
# suffixes, the legacy Qn_0/Qn_1, ternary TQ, MXFP4 and the float types.
_QUANT = re.compile(
    r"(?<![A-Za-z0-9])"
    r"(I?Q[1-8]_K(?:_(?:XXS|XS|S|M|L|XL))?|IQ[1-4]_(?:XXS|XS|S|M|NL)|Q[1-8]_[01]|TQ[12]_0"
    r"|MXFP4(?:_MOE)?|BF16|F16|F32|FP16|FP32)"
    r"(?![A-Za-z0-9])",
    re.IGNORECASE,
)
_SPLIT = re.compile(r"^(?P<stem>.*)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)
# llama.cpp's "tag" of a file name: the last -/. separated word (common/download.cpp).
_TAG = re.compile(r"[-.]([A-Z0-9_]+)$", re.IGNORECASE)
_SPLIT_SUFFIX = re.compile(r"-\d{5}-of-\d{5}$", re.IGNORECASE)


@dataclass(frozen=True)
class RepoFile:
    path: str
    size: int
    sha256: str | None


@dataclass(frozen=True)
class Candidate:
    """One model in a repository: a single file or all parts of a split file, in order."""

    files: tuple[RepoFile, ...]
    quant: str | None

    @property
    def first(self) -> RepoFile:
        return self.files[0]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def label(self) -> str:
        return self.quant or self.first.path.rsplit("/", 1)[-1]


def quant_of(path: str) -> str | None:
    """The quantization named in a file path, upper-cased (the last match wins)."""
    matches = _QUANT.findall(path)
    if not matches:
        return None
    name = str(matches[-1]).upper()
    return {"FP16": "F16", "FP32": "F32"}.get(name, name)


def _is_projector(path: str) -> bool:
    return "mmproj" in path.rsplit("/", 1)[-1].lower()


def quant_bits(path: str) -> int:
    """llama.cpp's ``extract_quant_bits``: the number in the file name's last word
    (``Q4_K_M`` -> 4, ``F16``/``BF16`` -> 16, ``Q8_0`` -> 8, none -> 0), split suffix and
    ``.gguf`` removed first."""
    stem = path[: -len(".gguf")] if path.lower().endswith(".gguf") else ""
    match = _TAG.search(_SPLIT_SUFFIX.sub("", stem))
    digits = re.search(r"\d+", match.group(1)) if match else None
    return int(digits.group()[:9]) if digits else 0


def choose_projector(files: Iterable[RepoFile], model: str) -> RepoFile | None:
    """The multimodal projector to pull with the model file ``model`` (for a split
    model, its first part), or None when the repository has none for it.

    The rule of llama.cpp's ``-hf`` (``find_best_sibling(files, model, "mmproj")`` in
    the vendored llama.cpp's common/download.cpp, called by
    ``common_download_get_hf_plan``):

    1. candidates are the ``.gguf`` files whose name contains ``mmproj``;
    2. a candidate must sit in the model's folder or in a folder above it (never in
       a sibling or deeper folder), and the deepest such folder wins: a projector next
       to the model beats one at the repository root;
    3. among those, the one whose quantization bits (``quant_bits``: the number in the
       last word of the name) are closest to the model's wins: a Q8_0 model gets an
       ``mmproj-Q8_0.gguf`` over ``mmproj-F16.gguf``, a Q4_K_M model gets the F16 (or
       BF16) projector over the F32 one;
    4. a tie goes to the first in the repository's listing (sorted by path here).

    One difference: llama.cpp matches ``mmproj`` case-sensitively anywhere in the path;
    here it is matched in the file name, case-insensitively, the same test that keeps
    projectors from being picked as the model, so every .gguf is exactly one of the two.
    """
    model_dirs = model.split("/")[:-1]
    model_bits = quant_bits(model)
    best: RepoFile | None = None
    best_key = (-1, 0)
    for file in sorted(files, key=lambda f: f.path):
        if not file.path.lower().endswith(".gguf") or not _is_projector(file.path):
            continue
        dirs = file.path.split("/")[:-1]
        if dirs != model_dirs[: len(dirs)]:
            continue
        key = (len(dirs), -abs(quant_bits(file.path) - model_bits))
        if best is None or key > best_key:
            best, best_key = file, key
    return best


def candidates(files: Iterable[RepoFile]) -> list[Candidate]:
    """Group a repository's .gguf files into models (split parts become one)."""
    singles: list[Candidate] = []
    splits: dict[tuple[str, int], dict[int, RepoFile]] = {}
    for file in files:
        if not file.path.lower().endswith(".gguf") or _is_projector(file.path):
            continue
        match = _SPLIT.match(file.path)
        if match:
            key = (match.group("stem"), int(match.group("count")))
            splits.setdefault(key, {})[int(match.group("index"))] = file
        else:
            singles.append(Candidate((file,), quant_of(file.path)))
    for (stem, count), parts in splits.items():
        if sorted(parts) != list(range(1, count + 1)):
            continue  # an incomplete split set cannot load; never offer it
        ordered = tuple(parts[i] for i in range(1, count + 1))
        singles.append(Candidate(ordered, quant_of(stem)))
    return sorted(singles, key=lambda c: c.first.path)


def choose(files: Iterable[RepoFile], tag: str, repo: str) -> Candidate:
    """The model a tag names, or NoSuchFileError listing what the repository has."""
    models = candidates(files)
    if not models:
        raise NoSuchFileError(
            f"{repo} has no GGUF model files",
            available=[],
            hint="localserve runs GGUF files; look for a repository with -GGUF in its name",
        )
    if tag == DEFAULT_TAG:
        for quant in DEFAULT_PREFERENCE:
            matching = [m for m in models if m.quant == quant]
            if matching:
                return min(matching, key=lambda m: m.size)
        return min(models, key=lambda m: m.size)

    wanted = tag.lower()
    by_name = [m for m in models if m.first.path.rsplit("/", 1)[-1].lower() == wanted]
    if by_name:
        return by_name[0]
    by_quant = [m for m in models if m.quant is not None and m.quant.lower() == wanted]
    if by_quant:
        # Several files of one quant (e.g. two fine-tunes in one repo): the smallest
        # is the least surprising default; an exact file name picks another.
        return min(by_quant, key=lambda m: m.size)

    available = sorted({m.label for m in models})
    raise NoSuchFileError(
        f"{repo} has no {tag!r} file; it has: {', '.join(available)}",
        available=available,
        hint=f"pull one of them, e.g. localserve pull hf.co/{repo}:{available[0]}",
    )
