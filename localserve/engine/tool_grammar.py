"""Grammars that make tool calls well-formed, from the tools' JSON schemas.

- ``tool_choice: "required"`` or a named function: the whole answer is constrained
  to one call (or several, with ``parallel_tool_calls``) in the model's own call
  syntax, the arguments matching the tool's parameter schema. Even a weak model then
  writes a call that validates; Ollama has no equivalent.
- ``"auto"``: the same grammar, made lazy: it stays inactive until the model writes
  the format's call marker (llama.cpp's lazy grammar, triggered by a regex over the
  generated text), so free text is untouched but a started call always completes;
  after the calls the text is free again.

The JSON parts come from llama-cpp-python's JSON-schema converter
(``llama_cpp.llama_grammar.SchemaConverter``); only the call syntax around them is
ours. Qwen3-Coder's XML calls get one ``<parameter=...>`` block per property (strings
as raw text without ``<``, other types as JSON values).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from localserve.errors import InvalidOptionError
from localserve.runtime.chat.formats import (
    DEEPSEEK_CALL_BEGIN,
    DEEPSEEK_CALL_END,
    DEEPSEEK_CALLS_BEGIN,
    DEEPSEEK_CALLS_END,
    DEEPSEEK_SEP,
    ToolFormat,
)

MAX_SCHEMA_BYTES = 64 << 10
_SPACE = "[ \\t\\n]{0,8}"


@dataclass(frozen=True)
class ToolGrammar:
    gbnf: str
    # Regexes over the generated text that switch a lazy grammar on; empty: always on.
    triggers: tuple[str, ...] = ()


def enforced_kinds() -> frozenset[str]:
    return frozenset(
        {"hermes", "generic", "llama3", "mistral", "mistral_args", "harmony", "deepseek"}
        | {"qwen3_coder"}
    )


def tool_grammar(
    tools_format: ToolFormat,
    tools: Sequence[dict[str, Any]],
    *,
    choice: str,
    parallel: bool,
    after: str = "",
) -> ToolGrammar | None:
    """The grammar for ``choice`` ("auto", "required" or a function name), or None
    when this format has none (then calls are parsed, not enforced).

    ``after``: for an enforced call, text the model writes freely first and that then
    starts the constrained part: the closing think tag when the prompt opened a
    thinking block (DeepSeek R1, QwQ), so the model reasons, then must call."""
    if choice == "none" or tools_format.kind not in enforced_kinds():
        return None
    chosen = (
        [t for t in tools if _name(t) == choice]
        if choice not in ("auto", "required")
        else list(tools)
    )
    if not chosen:
        return None
    from llama_cpp.llama_grammar import SchemaConverter

    converter: Any = SchemaConverter(  # type: ignore[no-untyped-call]
        prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False
    )
    key = tools_format.arguments_key
    calls: list[str] = []
    for index, tool in enumerate(chosen):
        name, parameters = _name(tool), _parameters(tool)
        try:
            schema = converter.resolve_refs(parameters, f"tool{index}")
            if tools_format.kind == "qwen3_coder":
                arguments = _xml_parameters(converter, schema, index)
            else:
                arguments = converter.visit(schema, f"tool{index}-arguments")
        except RecursionError:
            raise InvalidOptionError(f"the parameters of tool {name!r} nest too deeply") from None
        except Exception as exc:  # the converter raises whatever its parsing hits
            raise InvalidOptionError(f"the parameters of tool {name!r}: {exc}") from None
        calls.append(_call_rule(tools_format, name, key, arguments))
    call = " | ".join(f"( {c} )" for c in calls)
    lines = [converter.format_grammar(), f"call ::= {call}"]
    kind = tools_format.kind
    if kind == "mistral":
        repeat = f'( "," {_SPACE} call )*' if parallel else ""
        lines.append(f'root ::= "[TOOL_CALLS]" {_SPACE} "[" {_SPACE} call {repeat} {_SPACE} "]"')
    elif kind == "deepseek":
        repeat = "call*" if parallel else ""
        lines.append(f'root ::= "{DEEPSEEK_CALLS_BEGIN}" call {repeat} "{DEEPSEEK_CALLS_END}"')
    elif parallel and kind in ("hermes", "generic", "mistral_args", "qwen3_coder"):
        lines.append(f"root ::= call ( {_SPACE} call )*")
    else:
        lines.append("root ::= call")
    triggers: tuple[str, ...] = ()
    if choice == "auto":
        # After the calls, anything: the model ends its turn its own way (a GGUF whose
        # end-of-turn marker is not an end-of-generation token writes it as text).
        lines[-1] = lines[-1].replace("root ::= ", "root ::= ( ", 1) + " ) tail"
        lines.append("tail ::= [^\\x00]*")
    elif after:
        lines[-1] = (
            lines[-1].replace("root ::= ", f"root ::= {_literal(after)} {_SPACE} ( ", 1) + " )"
        )
        triggers = (r"[\s\S]*?(" + re.escape(after) + r"[\s\S]*)",)
    gbnf = "\n".join(lines)
    if choice == "auto":
        if kind == "llama3":
            triggers = (r"[\s]*(\{[\s\S]*)",)
        else:
            triggers = (r"[\s\S]*?(" + re.escape(tools_format.starts[0]) + r"[\s\S]*)",)
    return ToolGrammar(gbnf, triggers)


def _call_rule(tools_format: ToolFormat, name: str, key: str, arguments: str) -> str:
    """One call of ``name`` in the format's syntax; ``arguments`` is the rule of its
    arguments object."""
    kind = tools_format.kind
    quoted = _literal(json.dumps(name))
    json_call = (
        f'"{{" {_SPACE} "\\"name\\"" {_SPACE} ":" {_SPACE} {quoted} {_SPACE} "," {_SPACE} '
        f'{_literal(json.dumps(key))} {_SPACE} ":" {_SPACE} {arguments} {_SPACE} "}}"'
    )
    if kind == "hermes":
        return f'"<tool_call>" {_SPACE} {json_call} {_SPACE} "</tool_call>"'
    if kind == "generic":
        end = f" {_SPACE} {_literal(tools_format.end)}" if tools_format.end else ""
        return f"{_literal(tools_format.starts[0])} {_SPACE} {json_call}{end}"
    if kind in ("llama3", "mistral"):
        return json_call
    if kind == "mistral_args":
        return f'"[TOOL_CALLS]" {_literal(name)} "[ARGS]" {arguments}'
    if kind == "qwen3_coder":
        return f'"<tool_call>\\n<function=" {_literal(name)} ">\\n" {arguments} "</function>\\n</tool_call>"'
    if kind == "deepseek":
        if tools_format.variant == "r1":
            head = f'"{DEEPSEEK_CALL_BEGIN}function{DEEPSEEK_SEP}" {_literal(name)}'
            return f'{head} "\\n```json\\n" {arguments} "\\n```{DEEPSEEK_CALL_END}"'
        return (
            f'"{DEEPSEEK_CALL_BEGIN}" {_literal(name)} "{DEEPSEEK_SEP}" {arguments} '
            f'"{DEEPSEEK_CALL_END}"'
        )
    # harmony: the prompt ends with <|start|>assistant
    return (
        f'"<|channel|>commentary to=functions." {_literal(name)} '
        f'" <|constrain|>json<|message|>" {arguments}'
    )


def _xml_parameters(converter: Any, schema: dict[str, Any], index: int) -> str:
    """Qwen3-Coder's parameters: ``<parameter=KEY>\\nVALUE\\n</parameter>\\n`` for each
    property, in order, optional ones optional; a string is raw text, anything else
    a JSON value of its schema."""
    properties = schema.get("properties") or {}
    required = set(schema.get("required") or ())
    parts: list[str] = []
    for position, (key, given) in enumerate(properties.items()):
        value_schema = given if isinstance(given, dict) else {}
        if value_schema.get("type") == "string" and "enum" not in value_schema:
            value = "xml-text"
        else:
            value = converter.visit(value_schema, f"tool{index}-p{position}")
        block = f'"<parameter=" {_literal(key)} ">\\n" {value} "\\n</parameter>\\n"'
        parts.append(block if key in required else f"( {block} )?")
    converter._rules["xml-text"] = "[^<]*"  # a raw string value: anything but a tag
    return " ".join(parts) or '""'


def _literal(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _name(tool: dict[str, Any]) -> str:
    function = tool.get("function") or {}
    return str(function.get("name", ""))


def _parameters(tool: dict[str, Any]) -> dict[str, Any]:
    function = tool.get("function") or {}
    parameters = function.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        return {"type": "object"}
    if len(json.dumps(parameters)) > MAX_SCHEMA_BYTES:
        raise InvalidOptionError(f"the parameters of tool {_name(tool)!r} are over 64 KiB")
    checked: dict[str, Any] = _with_any_values(parameters, root=True)
    return checked


# JSON Schema's "any value": a schema that constrains nothing ({}, or only a
# description: Claude Code's tools have such properties). llama.cpp's converter takes {}
# for an object and refuses the rest ("Unrecognized schema"); this says it in its terms.
ANY_VALUE: dict[str, Any] = {"type": ["string", "number", "boolean", "object", "array", "null"]}
# The keys the converter builds a rule from; a schema with none of them allows anything.
_CONSTRAINING = frozenset(
    {"$ref", "type", "oneOf", "anyOf", "allOf", "const", "enum", "properties"}
    | {"additionalProperties", "items", "prefixItems", "pattern", "format"}
)


# A maxLength or maxItems beyond this is not enforced: the converter spells a bound out
# as that many optional repetitions (Claude Code's maxLength 524288 made a 4 MB grammar),
# and no tool call gets near it.
MAX_ENFORCED_BOUND = 256


def _with_any_values(schema: Any, *, root: bool = False) -> Any:
    """``schema`` with each subschema that constrains nothing made ANY_VALUE (the
    arguments themselves stay an object), and bounds too large to spell out dropped."""
    if not isinstance(schema, dict):
        return schema
    if not root and not _CONSTRAINING & schema.keys():
        return {**schema, **ANY_VALUE}
    result = {
        key: value
        for key, value in schema.items()
        if not (
            key in ("maxLength", "maxItems")
            and isinstance(value, int)
            and value > MAX_ENFORCED_BOUND
        )
    }
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        if isinstance(result.get(key), list):
            result[key] = [_with_any_values(s) for s in result[key]]
    for key in ("properties", "$defs", "definitions"):
        if isinstance(result.get(key), dict):
            result[key] = {name: _with_any_values(s) for name, s in result[key].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(result.get(key), dict):
            result[key] = _with_any_values(result[key])
    return result
