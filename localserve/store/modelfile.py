"""Modelfiles: Ollama's recipe for a custom model, parsed and written back.

::

    # a comment
    FROM hf.co/unsloth/gemma-3-270m-it-GGUF:Q4_K_M
    PARAMETER temperature 0.2
    PARAMETER stop "<|user|>"
    PARAMETER stop "</s>"
    SYSTEM \"\"\"You are terse.
    Answer in one line.\"\"\"
    MESSAGE user Is the sky blue?
    MESSAGE assistant Yes.
    TEMPLATE \"\"\"{% for m in messages %}...{% endfor %}\"\"\"
    ADAPTER ./my-lora.gguf 0.5
    LICENSE \"\"\"Apache 2.0\"\"\"

Keywords are case-insensitive; a value is the rest of the line, a ``"..."`` string,
or a ``\"\"\"...\"\"\"`` block over several lines. ``PARAMETER stop`` may repeat and
accumulates; ``MESSAGE`` and ``ADAPTER`` may repeat; the others take the last one.
Values are checked here as far as they can be without the store (parameters by the
same option schema as requests, roles, the template's syntax); every error names its
line. ``TEMPLATE`` takes a Jinja chat template, the GGUF's format: Ollama's Go
templates (``{{ .Prompt }}``) are refused with a message saying so.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localserve.errors import InvalidOptionError

KEYWORDS = ("FROM", "PARAMETER", "SYSTEM", "MESSAGE", "TEMPLATE", "ADAPTER", "LICENSE")
ROLES = ("system", "user", "assistant", "tool")
# Go's text/template fields: {{ .Prompt }}, {{- .System }}, {{ range .Messages }}...
_GO_TEMPLATE = re.compile(r"{{-?\s*(?:\.[A-Z]|range\s+\.|if\s+\.|end\s*-?}})")


class ModelfileError(InvalidOptionError):
    """A Modelfile that cannot become a model; the message names the line."""


@dataclass(frozen=True)
class Adapter:
    path: str  # as written (relative paths are relative to the Modelfile's folder)
    scale: float = 1.0


@dataclass
class ModelSpec:
    """What a Modelfile (or /api/create's JSON) asks for."""

    base: str = ""  # FROM: a stored name, a GGUF path or an hf.co reference
    parameters: dict[str, Any] = field(default_factory=dict)
    system: str | None = None
    template: str | None = None
    messages: list[dict[str, str]] = field(default_factory=list)
    adapters: list[Adapter] = field(default_factory=list)
    license: str | None = None


def parse_modelfile(text: str) -> ModelSpec:
    spec = ModelSpec()
    for line, keyword, value in _instructions(text):
        where = f"line {line}"
        if keyword == "FROM":
            if not value:
                raise ModelfileError(f"{where}: FROM needs a model name or a GGUF path")
            spec.base = value
        elif keyword == "PARAMETER":
            key, _, raw = value.partition(" ")
            if not key or not raw.strip():
                raise ModelfileError(f"{where}: PARAMETER needs a name and a value")
            add_parameter(spec.parameters, key.lower(), _unquote(raw.strip()), where)
        elif keyword == "SYSTEM":
            spec.system = value
        elif keyword == "TEMPLATE":
            spec.template = check_template(value, where)
        elif keyword == "MESSAGE":
            role, _, content = value.partition(" ")
            spec.messages.append(check_message(role.lower(), _unquote(content.strip()), where))
        elif keyword == "ADAPTER":
            spec.adapters.append(_adapter(value, where))
        elif keyword == "LICENSE":
            spec.license = value
    if not spec.base:
        raise ModelfileError("the Modelfile has no FROM line: say which model it builds on")
    return spec


def _instructions(text: str) -> list[tuple[int, str, str]]:
    """(line number, KEYWORD, value) for each instruction, multi-line values joined."""
    found: list[tuple[int, str, str]] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        number, raw = index + 1, lines[index].strip()
        index += 1
        if not raw or raw.startswith("#"):
            continue
        keyword, _, rest = raw.partition(" ")
        keyword = keyword.upper()
        if keyword not in KEYWORDS:
            raise ModelfileError(
                f"line {number}: unknown instruction {raw.split()[0]!r} "
                f"(one of {', '.join(KEYWORDS)})"
            )
        rest = rest.strip()
        if rest.startswith('"""'):
            body = rest[3:]
            while '"""' not in body:
                if index >= len(lines):
                    raise ModelfileError(f'line {number}: {keyword}\'s """ is never closed')
                body += "\n" + lines[index]
                index += 1
            value, _, after = body.partition('"""')
            if after.strip():
                raise ModelfileError(f'line {number}: text after the closing """')
        elif keyword in ("PARAMETER", "MESSAGE", "ADAPTER"):
            value = rest  # their own parts are unquoted one by one
        else:
            value = _unquote(rest)
        found.append((number, keyword, value))
    return found


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            unquoted: str = json.loads(value)
            return unquoted
        except ValueError:
            return value[1:-1]
    return value


def add_parameter(parameters: dict[str, Any], key: str, raw: Any, where: str) -> None:
    """Check one parameter with the request option schema; ``stop`` accumulates."""
    from localserve.schemas.options import split_options

    value = _typed(raw)
    if key == "stop":
        value = [*parameters.get("stop", []), *([raw] if isinstance(raw, str) else raw)]
    try:
        split_options({key: value}, num_ctx=2048, num_parallel=1)
    except InvalidOptionError as exc:
        raise ModelfileError(f"{where}: PARAMETER {key}: {exc}") from None
    parameters[key] = value


def _typed(raw: Any) -> Any:
    """A Modelfile value as the JSON the option schema expects: 0.7, 40, true, text."""
    if not isinstance(raw, str):
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def check_template(template: str, where: str) -> str:
    if _GO_TEMPLATE.search(template):
        raise ModelfileError(
            f"{where}: TEMPLATE is an Ollama Go template ({{{{ .Prompt }}}}); localserve "
            "takes a Jinja chat template, the format of a GGUF's tokenizer.chat_template "
            "({% for message in messages %}...)"
        )
    from localserve.errors import TemplateError
    from localserve.runtime.templates import ChatTemplate

    try:
        ChatTemplate(template, bos_token="", eos_token="")
    except TemplateError as exc:
        raise ModelfileError(f"{where}: TEMPLATE is not a valid Jinja template: {exc}") from None
    return template


def check_message(role: str, content: str, where: str) -> dict[str, str]:
    if role not in ROLES:
        raise ModelfileError(f"{where}: MESSAGE role must be one of {', '.join(ROLES)}")
    return {"role": role, "content": content}


def _adapter(value: str, where: str) -> Adapter:
    try:
        parts = shlex.split(value)
    except ValueError:
        raise ModelfileError(f"{where}: ADAPTER has an unclosed quote") from None
    if not parts:
        raise ModelfileError(f"{where}: ADAPTER needs the path of a LoRA GGUF")
    scale = 1.0
    if len(parts) > 1:
        try:
            scale = float(parts[-1])
        except ValueError:
            raise ModelfileError(
                f"{where}: ADAPTER takes a path and an optional scale, got {value!r}"
            ) from None
        parts = parts[:-1]
    return Adapter(" ".join(parts), scale)


# ------------------------------------------------------------------- writing


def render_modelfile(
    base: str,
    *,
    parameters: dict[str, Any],
    system: str | None,
    template: str | None,
    messages: list[dict[str, str]],
    adapters: list[tuple[str, float]],
    license: str | None,
) -> str:
    """A Modelfile that recreates a model (``show --modelfile``)."""
    out = [f"# Modelfile generated by localserve show\nFROM {base}"]
    for key, value in parameters.items():
        for item in value if key == "stop" and isinstance(value, list) else [value]:
            shown = json.dumps(item) if isinstance(item, str | bool) or item is None else item
            out.append(f"PARAMETER {key} {shown}")
    if template is not None:
        out.append(f'TEMPLATE """{template}"""')
    if system is not None:
        out.append(f'SYSTEM """{system}"""')
    for path, scale in adapters:
        out.append(f"ADAPTER {shlex.quote(path)}" + (f" {scale}" if scale != 1.0 else ""))
    for message in messages:
        out.append(f"MESSAGE {message['role']} {json.dumps(message['content'])}")
    if license is not None:
        out.append(f'LICENSE """{license}"""')
    return "\n".join(out) + "\n"


def resolve_path(value: str, folder: Path) -> Path:
    """A path written in a Modelfile, relative to the Modelfile's folder."""
    return (folder / Path(value).expanduser()).absolute()
