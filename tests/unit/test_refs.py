"""Model names, tags and digests: what is accepted, how it is normalised, what is refused."""

from __future__ import annotations

import pytest

from localserve.errors import InvalidReferenceError
from localserve.store.refs import (
    ModelRef,
    check_repo_filename,
    parse_digest,
    parse_ref,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "hf.co/unsloth/gemma-3-270m-it-GGUF:Q4_K_M",
            ModelRef("hf.co", ("unsloth", "gemma-3-270m-it-GGUF"), "Q4_K_M"),
        ),
        ("huggingface.co/a/b", ModelRef("hf.co", ("a", "b"), "latest")),
        ("HF.CO/a/b:q8_0", ModelRef("hf.co", ("a", "b"), "q8_0")),
        ("owner/repo.v2", ModelRef("hf.co", ("owner", "repo.v2"), "latest")),
        ("owner/repo:model-Q4_K_M.gguf", ModelRef("hf.co", ("owner", "repo"), "model-Q4_K_M.gguf")),
        ("mymodel", ModelRef("local", ("mymodel",), "latest")),
        ("my.model_2:v1", ModelRef("local", ("my.model_2",), "v1")),
        ("  spaced  ", ModelRef("local", ("spaced",), "latest")),
    ],
)
def test_parse_ref_accepts_and_normalises(text: str, expected: ModelRef) -> None:
    assert parse_ref(text) == expected


def test_str_round_trips() -> None:
    for text in ["hf.co/a/b:Q4_K_M", "name:latest", "hf.co/x-y/z.w:file.gguf"]:
        assert str(parse_ref(text)) == text
        assert parse_ref(str(parse_ref(text))) == parse_ref(text)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("../../etc/passwd", "too many"),
        ("../x", "bad repository part"),
        ("a/../b", "too many"),
        ("..", "bad name"),
        ("/etc/passwd", "file paths"),
        ("~/model.gguf", "file paths"),
        ("C:\\models\\x", "file paths"),
        ("file:///etc/passwd", "URLs"),
        ("http://169.254.169.254/latest/meta-data", "URLs"),
        ("https://huggingface.co/a/b", "URLs"),
        ("name\x00evil", "control characters"),
        ("name\nnext", "control characters"),
        ("a" * 5000, "longer than"),
        ("a/b/c/d", "too many"),
        ("hf.co/onlyowner", "hf.co/OWNER/REPO"),
        ("a:b:c", "more than one"),
        ("name:../x", "unexpected"),
        ("name:..", "bad tag"),
        ("name:.hidden", "bad tag"),
        ("name:", "bad tag"),
        ("-leading", "bad name"),
        ("owner--x/repo", "bad repository part"),
        ("localhost:8080/x", "unexpected"),
    ],
)
def test_parse_ref_refuses_hostile_names(text: str, reason: str) -> None:
    with pytest.raises(InvalidReferenceError) as info:
        parse_ref(text)
    assert reason in str(info.value)
    assert "\n" not in str(info.value)  # one line, even for hostile input
    assert len(str(info.value)) < 300


def test_digest_forms() -> None:
    hexd = "ab" * 32
    assert parse_digest(f"sha256:{hexd}") == hexd
    assert parse_digest(f"sha256-{hexd}") == hexd
    assert parse_digest(hexd.upper()) == hexd
    assert parse_digest(f'"{hexd}"') == hexd  # an ETag as the Hub sends it


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "sha256:",
        "sha256:zz" + "0" * 62,
        "0" * 63,
        "../" + "0" * 64,
        "sha1:" + "0" * 40,
        "0" * 64 + "\x00",
    ],
)
def test_digest_refuses(bad: str) -> None:
    with pytest.raises(InvalidReferenceError):
        parse_digest(bad)


@pytest.mark.parametrize(
    "good", ["model.gguf", "Q4_K_M/model-Q4_K_M-00001-of-00002.gguf", "a b (1).gguf"]
)
def test_repo_filename_accepts(good: str) -> None:
    assert check_repo_filename(good) == good


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "/abs.gguf",
        "../x.gguf",
        "a/../../x.gguf",
        "a//b.gguf",
        "a\\b.gguf",
        "x\x00.gguf",
        "./x.gguf",
    ],
)
def test_repo_filename_refuses(bad: str) -> None:
    with pytest.raises(InvalidReferenceError):
        check_repo_filename(bad)
