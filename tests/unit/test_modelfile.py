"""Modelfiles: the parser (every instruction, every error with its line), and the
text it writes back for `show --modelfile`."""

from __future__ import annotations

import pytest

from localserve.store.modelfile import (
    Adapter,
    ModelfileError,
    parse_modelfile,
    render_modelfile,
)

JINJA = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"

FULL = f'''
# a comment, then every instruction (keywords in any case)
FROM tiny
parameter temperature 0.2
PARAMETER num_ctx 512
PARAMETER stop "<|user|>"
PARAMETER stop </s>
PARAMETER seed 7
SYSTEM """You are terse.
Answer in one line."""
MESSAGE user "Is the sky blue?"
MESSAGE assistant Yes.
TEMPLATE """{JINJA}"""
ADAPTER ./lora.gguf
Adapter "./other lora.gguf" 0.5
LICENSE """MIT
(c) someone"""
'''


def test_every_instruction() -> None:
    spec = parse_modelfile(FULL)
    assert spec.base == "tiny"
    assert spec.parameters == {
        "temperature": 0.2,
        "num_ctx": 512,
        "stop": ["<|user|>", "</s>"],
        "seed": 7,
    }
    assert spec.system == "You are terse.\nAnswer in one line."
    assert spec.messages == [
        {"role": "user", "content": "Is the sky blue?"},
        {"role": "assistant", "content": "Yes."},
    ]
    assert spec.template == JINJA
    assert spec.adapters == [Adapter("./lora.gguf", 1.0), Adapter("./other lora.gguf", 0.5)]
    assert spec.license == "MIT\n(c) someone"


def test_single_line_values_and_last_one_wins() -> None:
    spec = parse_modelfile('FROM a\nFROM b\nSYSTEM "first"\nSYSTEM second one\n')
    assert spec.base == "b" and spec.system == "second one"


def test_written_modelfile_parses_back_to_the_same_settings() -> None:
    spec = parse_modelfile(FULL)
    text = render_modelfile(
        spec.base,
        parameters=spec.parameters,
        system=spec.system,
        template=spec.template,
        messages=spec.messages,
        adapters=[(a.path, a.scale) for a in spec.adapters],
        license=spec.license,
    )
    again = parse_modelfile(text)
    assert again == spec


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("FROM tiny\nPARAMTER temperature 1\n", "line 2: unknown instruction 'PARAMTER'"),
        ("FROM tiny\n\nPARAMETER temprature 0.5\n", "line 3: PARAMETER temprature: unknown option 'temprature'"),
        ("FROM tiny\nPARAMETER temperature hot\n", "line 2: PARAMETER temperature:"),
        ("FROM tiny\nPARAMETER top_k\n", "line 2: PARAMETER needs a name and a value"),
        ("SYSTEM hi\n", "no FROM line"),
        ("FROM\n", "line 1: FROM needs a model name"),
        ('FROM tiny\nTEMPLATE """{{ .Prompt }}"""\n', "line 2: TEMPLATE is an Ollama Go template"),
        ('FROM tiny\nTEMPLATE """{{- if .System }}x{{ end }}"""\n', "Ollama Go template"),
        ('FROM tiny\nTEMPLATE """{% for m in messages %}"""\n', "line 2: TEMPLATE is not a valid Jinja template"),
        ('FROM tiny\nSYSTEM """never closed\n', 'line 2: SYSTEM\'s """ is never closed'),
        ("FROM tiny\nMESSAGE robot hello\n", "line 2: MESSAGE role must be one of"),
        ("FROM tiny\nADAPTER\n", "line 2: ADAPTER needs the path"),
        ("FROM tiny\nADAPTER a.gguf b.gguf\n", "line 2: ADAPTER takes a path and an optional scale"),
    ],
)  # fmt: skip
def test_errors_name_their_line(text: str, error: str) -> None:
    with pytest.raises(ModelfileError) as caught:
        parse_modelfile(text)
    assert error in str(caught.value)
