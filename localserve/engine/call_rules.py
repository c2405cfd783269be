"""GBNF for one tool call in each format's syntax (engine/tool_grammar.py puts the
calls together). Arguments that are JSON come from llama-cpp-python's schema
converter; formats that write arguments another way get one rule per property, in
the schema's order, optional ones optional:

- raw-text values (Qwen3-Coder's ``<parameter=K>``, tagged formats' blocks, Muse's
  ``<atem:parameter name="K">``): a string
  is text without the character that starts its closing marker, anything else a
  JSON value of its schema;
- Python keyword arguments (LFM2): strings as JSON strings (valid Python too),
  booleans as ``True``/``False``;
- Gemma 4's objects: bare keys, strings between ``<|"|>`` marks.
"""

from __future__ import annotations

import json
from typing import Any

from localserve.runtime.chat.syntax import (
    ATEM_CALLS_CLOSE,
    ATEM_CALLS_OPEN,
    DEEPSEEK_CALL_BEGIN,
    DEEPSEEK_CALL_END,
    DEEPSEEK_SEP,
    ID_SLOT,
    INDEX_SLOT,
    KEY_SLOT,
    MUSE_MESSAGE,
    ToolFormat,
)

SPACE = "[ \\t\\n]{0,8}"


def literal(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def slotted(text: str) -> str:
    """A learnt literal as GBNF: its slots as a made-up id or a call number."""
    parts: list[str] = []
    piece = ""
    for char in text:
        if char in (ID_SLOT, INDEX_SLOT):
            if piece:
                parts.append(literal(piece))
            parts.append("[a-z0-9]{10}" if char == ID_SLOT else "[0-9]")
            piece = ""
        else:
            piece += char
    if piece or not parts:
        parts.append(literal(piece))
    return " ".join(parts)


def call_rule(tools_format: ToolFormat, name: str, arguments: str) -> str:
    """One call of ``name`` in the format's syntax; ``arguments`` is the rule of its
    arguments (a JSON object, or the format's own argument rules)."""
    kind = tools_format.kind
    if kind in ("hermes", "generic", "llama3", "mistral"):
        call = json_call(tools_format, name, arguments)
        if kind == "hermes":
            return f'"<tool_call>" {SPACE} {call} {SPACE} "</tool_call>"'
        if kind == "generic" and not tools_format.array:
            end = f" {SPACE} {literal(tools_format.end)}" if tools_format.end else ""
            return f"{literal(tools_format.starts[0])} {SPACE} {call}{end}"
        return call
    if kind == "mistral_args":
        return f'"[TOOL_CALLS]" {literal(name)} "[ARGS]" {arguments}'
    if kind == "qwen3_coder":
        return f'"<tool_call>\\n<function=" {literal(name)} ">\\n" {arguments} "</function>\\n</tool_call>"'
    if kind == "deepseek":
        if tools_format.variant == "r1":
            head = f'"{DEEPSEEK_CALL_BEGIN}function{DEEPSEEK_SEP}" {literal(name)}'
            return f'{head} "\\n```json\\n" {arguments} "\\n```{DEEPSEEK_CALL_END}"'
        return (
            f'"{DEEPSEEK_CALL_BEGIN}" {literal(name)} "{DEEPSEEK_SEP}" {arguments} '
            f'"{DEEPSEEK_CALL_END}"'
        )
    if kind == "tagged":
        assert tools_format.syntax is not None
        syntax = tools_format.syntax
        # call_open is written by the root (the first call's without its blanks).
        return (
            f"{literal(name)} {slotted(syntax.name_close)} {arguments} {slotted(syntax.call_close)}"
        )
    if kind == "pythonic":
        return f'{literal(name)} "(" {arguments} ")"'
    if kind == "gemma4":
        return f'"<|tool_call>call:" {literal(name)} "{{" {arguments} "}}<tool_call|>"'
    if kind == "muse":  # the prompt ends with <|start|>assistant; the name is written twice
        opening = literal(MUSE_MESSAGE + ATEM_CALLS_OPEN + '\n<atem:invoke name="')
        name_end = literal('">\n')
        closing = literal("</atem:invoke>\n" + ATEM_CALLS_CLOSE)
        return f'" to=" {literal(name)} {opening} {literal(name)} {name_end} {arguments} {closing}'
    # harmony: the prompt ends with <|start|>assistant
    return (
        f'"<|channel|>commentary to=functions." {literal(name)} '
        f'" <|constrain|>json<|message|>" {arguments}'
    )


def json_call(tools_format: ToolFormat, name: str, arguments: str) -> str:
    """``{"name": NAME, "arguments": {...}}`` with the format's keys (Command R's
    ``tool_call_id``/``tool_name``/``parameters``), or ``{"NAME": {...}}``."""
    quoted = literal(json.dumps(name))
    if not tools_format.name_key:
        return f'"{{" {SPACE} {quoted} {SPACE} ":" {SPACE} {arguments} {SPACE} "}}"'
    fields = []
    if tools_format.id_key:
        fields.append(
            f'{literal(json.dumps(tools_format.id_key))} {SPACE} ":" {SPACE} "\\"" [0-9] "\\""'
        )
    fields.append(f'{literal(json.dumps(tools_format.name_key))} {SPACE} ":" {SPACE} {quoted}')
    key = literal(json.dumps(tools_format.arguments_key))
    fields.append(f'{key} {SPACE} ":" {SPACE} {arguments}')
    body = f' {SPACE} "," {SPACE} '.join(fields)
    return f'"{{" {SPACE} {body} {SPACE} "}}"'


def argument_rules(
    tools_format: ToolFormat, converter: Any, schema: dict[str, Any], index: int
) -> str:
    """The rule of one tool's arguments in the format's syntax."""
    kind = tools_format.kind
    if kind == "qwen3_coder":
        return _blocks(
            converter,
            schema,
            index,
            lambda key, _: (f'"<parameter=" {literal(key)} ">\\n"', '"\\n</parameter>\\n"'),
            "<",
        )
    if kind == "tagged" and tools_format.syntax and tools_format.syntax.tagged_arguments:
        syntax = tools_format.syntax
        return _blocks(
            converter,
            schema,
            index,
            lambda key, kind: (
                f"{slotted(syntax.key_open)} {literal(key)} {slotted(syntax.key_close_for(kind))}",
                slotted(syntax.value_close.replace(KEY_SLOT, key)),
            ),
            syntax.value_close.strip()[:1] or "<",
        )
    if kind == "muse":
        return _blocks(
            converter,
            schema,
            index,
            lambda key, _: (
                literal('<atem:parameter name="') + f" {literal(key)} " + literal('">'),
                literal("</atem:parameter>\n"),
            ),
            "<",
        )
    if kind == "pythonic":
        return _keywords(converter, schema, index, "=", _python_value)
    if kind == "gemma4":
        return _keywords(converter, schema, index, ":", _gemma_value)
    return str(converter.visit(schema, f"tool{index}-arguments"))


def _properties(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any], bool]]:
    properties = schema.get("properties") or {}
    required = set(schema.get("required") or ())
    return [
        (key, given if isinstance(given, dict) else {}, key in required)
        for key, given in properties.items()
    ]


def _is_text(value_schema: dict[str, Any]) -> bool:
    return value_schema.get("type") == "string" and "enum" not in value_schema


def _blocks(converter: Any, schema: dict[str, Any], index: int, markers: Any, stop: str) -> str:
    """One block per property: ``open VALUE close``; a string value is raw text up
    to ``stop`` (the first character of the closing marker)."""
    text_rule = "xml-text" if stop == "<" else f"raw-text-{ord(stop)}"
    parts: list[str] = []
    for position, (key, value_schema, required) in enumerate(_properties(schema)):
        kind = str(value_schema.get("type", "object"))
        if _is_text(value_schema):
            value = text_rule
        elif value_schema.get("type") == "string" and value_schema.get("enum"):
            value = "( " + " | ".join(literal(str(v)) for v in value_schema["enum"]) + " )"
        else:
            value = converter.visit(value_schema, f"tool{index}-p{position}")
        opening, closing = markers(key, kind)
        block = f"{opening} {value} {closing}"
        parts.append(block if required else f"( {block} )?")
    escaped = stop.replace("\\", "\\\\").replace("]", "\\]").replace("^", "\\^").replace("-", "\\-")
    converter._rules[text_rule] = f"[^{escaped}]*"
    return " ".join(parts) or '""'


def _keywords(converter: Any, schema: dict[str, Any], index: int, equals: str, value: Any) -> str:
    """``key=value, ...`` (or ``key:value,...``): required ones first, optional ones
    after; without required ones, the first optional one opens the list."""
    items = []
    for position, (key, value_schema, required) in enumerate(_properties(schema)):
        rule = value(converter, value_schema, f"tool{index}-p{position}")
        items.append((f"{literal(key + equals)} {rule}", required))
    comma = '", "' if equals == "=" else '","'
    ordered = [i for i, r in items if r] + [i for i, r in items if not r]
    required_count = sum(1 for _, r in items if r)
    if not ordered:
        return '""'
    if required_count:
        head = f" {comma} ".join(ordered[:required_count])
        tail = "".join(f" ( {comma} {item} )?" for item in ordered[required_count:])
        return head + tail
    rest = "".join(f" ( {comma} {item} )?" for item in ordered[1:])
    return f"( {ordered[0]}{rest} )?"


def _python_value(converter: Any, value_schema: dict[str, Any], name: str) -> str:
    if value_schema.get("type") == "boolean":
        return '( "True" | "False" )'
    return str(converter.visit(value_schema, name))


def _gemma_value(converter: Any, value_schema: dict[str, Any], name: str) -> str:
    if _is_text(value_schema):
        converter._rules["gemma-text"] = "[^<]*"
        return '"<|\\"|>" gemma-text "<|\\"|>"'
    if value_schema.get("type") == "string":  # an enum: each value between the marks
        choices = [str(v) for v in value_schema.get("enum") or ()]
        return "( " + " | ".join(literal(f'<|"|>{c}<|"|>') for c in choices) + " )"
    return str(converter.visit(value_schema, name))
