"""Which file a tag picks in a GGUF repository."""

from __future__ import annotations

import pytest

from localserve.errors import NoSuchFileError
from localserve.store.quants import RepoFile, candidates, choose, quant_of


def files(*spec: tuple[str, int]) -> list[RepoFile]:
    return [RepoFile(path, size, "0" * 64) for path, size in spec]


REPO = files(
    ("README.md", 10),
    ("model-Q2_K.gguf", 100),
    ("model-Q4_K_M.gguf", 200),
    ("model-Q8_0.gguf", 400),
    ("model-IQ3_M.gguf", 150),
    ("mmproj-model-f16.gguf", 50),
    ("model-F16-00001-of-00002.gguf", 500),
    ("model-F16-00002-of-00002.gguf", 300),
)


@pytest.mark.parametrize(
    ("path", "quant"),
    [
        ("model-Q4_K_M.gguf", "Q4_K_M"),
        ("model.q8_0.gguf", "Q8_0"),
        ("gemma-3-270m-it-IQ3_XXS.gguf", "IQ3_XXS"),
        ("Q5_K_S/model-Q5_K_S-00001-of-00002.gguf", "Q5_K_S"),
        ("model-bf16.gguf", "BF16"),
        ("model-fp16.gguf", "F16"),
        ("model-UD-Q4_K_XL.gguf", "Q4_K_XL"),
        ("model.gguf", None),
        ("q4model.gguf", None),
    ],
)
def test_quant_of(path: str, quant: str | None) -> None:
    assert quant_of(path) == quant


def test_default_is_q4_k_m() -> None:
    assert choose(REPO, "latest", "o/r").first.path == "model-Q4_K_M.gguf"


def test_quant_tag_is_case_insensitive() -> None:
    assert choose(REPO, "q8_0", "o/r").first.path == "model-Q8_0.gguf"
    assert choose(REPO, "iq3_m", "o/r").quant == "IQ3_M"


def test_exact_file_name() -> None:
    assert choose(REPO, "model-Q2_K.gguf", "o/r").first.path == "model-Q2_K.gguf"


def test_split_files_are_one_model_in_order() -> None:
    chosen = choose(REPO, "F16", "o/r")
    assert [f.path for f in chosen.files] == [
        "model-F16-00001-of-00002.gguf",
        "model-F16-00002-of-00002.gguf",
    ]
    assert chosen.size == 800


def test_projector_is_never_the_model() -> None:
    assert all("mmproj" not in c.first.path for c in candidates(REPO))
    with pytest.raises(NoSuchFileError):
        choose(files(("mmproj-x-f16.gguf", 5)), "latest", "o/r")


def test_incomplete_split_is_not_offered() -> None:
    repo = files(
        ("m-Q8_0-00001-of-00003.gguf", 1), ("m-Q8_0-00002-of-00003.gguf", 1), ("m-Q4_0.gguf", 1)
    )
    assert [c.quant for c in candidates(repo)] == ["Q4_0"]


def test_unknown_tag_lists_what_exists() -> None:
    with pytest.raises(NoSuchFileError) as info:
        choose(REPO, "Q5_K_M", "o/r")
    assert info.value.available == ["F16", "IQ3_M", "Q2_K", "Q4_K_M", "Q8_0"]
    assert "Q4_K_M" in str(info.value)
    assert info.value.hint
    assert "localserve pull hf.co/o/r:" in info.value.hint


def test_default_without_q4_k_m_follows_the_documented_order() -> None:
    repo = files(("m-Q8_0.gguf", 400), ("m-Q6_K.gguf", 300), ("m-Q2_K.gguf", 100))
    assert choose(repo, "latest", "o/r").quant == "Q6_K"


def test_default_without_known_quants_takes_the_smallest() -> None:
    repo = files(("big.gguf", 400), ("small.gguf", 100))
    assert choose(repo, "latest", "o/r").first.path == "small.gguf"


def test_repo_without_gguf() -> None:
    with pytest.raises(NoSuchFileError, match="no GGUF"):
        choose(files(("model.safetensors", 5)), "latest", "o/r")
