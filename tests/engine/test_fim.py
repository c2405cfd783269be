"""Fill-in-the-middle's prompt on real llama.cpp: prefix, suffix and middle tokens in
llama.cpp's PSM order for a tiny model generated with FIM tokens."""

from __future__ import annotations

from pathlib import Path

import pytest

from localserve.engine.llama import Model
from localserve.engine.prompt import PromptBuilder
from tests.support.tiny_gguf import write_tiny_gguf

PREFIX = "def add(a, b):\n    "

SUFFIX = "\n    return total\n"


@pytest.fixture(scope="module")
def fim_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("fim") / "coder.gguf", fim=True)


def test_prompt_layout_is_prefix_suffix_middle(fim_path: Path) -> None:
    model = Model([fim_path])
    try:
        fim = model.fim_tokens()
        assert fim is not None
        pre, suf, mid = fim
        tokens = PromptBuilder(model, None).infill(PREFIX, SUFFIX, num_ctx=512).tokens
        prefix = model.tokenize(PREFIX, add_special=False, parse_special=False)
        suffix = model.tokenize(SUFFIX, add_special=False, parse_special=False)
        assert tokens == [model.bos, pre, *prefix, suf, *suffix, mid]
        # Markers inside the code stay text: no second <fim_suffix> token.
        tricky = PromptBuilder(model, None).infill("x<fim_suffix>y", "", num_ctx=512).tokens
        assert tricky.count(suf) == 1
    finally:
        model.close()
