"""Grammars that make tool calls well-formed, from the tools' JSON schemas.

- ``tool_choice: "required"`` or a named function: the whole answer is constrained
  to one call (or several, with ``parallel_tool_calls`` where the template renders
  several) in the model's own call syntax, the arguments matching the tool's
  parameter schema. Even a weak model then writes a call that validates; Ollama has
  no equivalent.
- ``"auto"``: the same grammar, made lazy: it stays inactive until the model writes
  the format's call marker (llama.cpp's lazy grammar, triggered by a regex over the
  generated text), so free text is untouched but a started call always completes;
  after the calls the text is free again.

The JSON parts come from llama-cpp-python's JSON-schema converter
(``llama_cpp.llama_grammar.SchemaConverter``); the call syntax around them is
engine/call_rules.py's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from localserve.engine.call_rules import SPACE, argument_rules, call_rule, literal, slotted
from localserve.errors import InvalidOptionError
from localserve.runtime.chat.syntax import (
    DEEPSEEK_CALLS_BEGIN,
    DEEPSEEK_CALLS_END,
    MUSE_MESSAGE,
    MUSE_MORE,
    MUSE_START,
    ToolFormat,
)

MAX_SCHEMA_BYTES = 64 << 10


@dataclass(frozen=True)
class ToolGrammar:
    gbnf: str
    # Regexes over the generated text that switch a lazy grammar on; empty: always on.
    triggers: tuple[str, ...] = ()


def enforced_kinds() -> frozenset[str]:
    return frozenset(
        {"hermes", "generic", "llama3", "mistral", "mistral_args", "harmony", "deepseek"}
        | {"qwen3_coder", "tagged", "pythonic", "gemma4", "muse"}
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
    calls: list[str] = []
    for index, tool in enumerate(chosen):
        name, parameters = _name(tool), _parameters(tool)
        try:
            schema = converter.resolve_refs(parameters, f"tool{index}")
            arguments = argument_rules(tools_format, converter, schema, index)
        except RecursionError:
            raise InvalidOptionError(f"the parameters of tool {name!r} nest too deeply") from None
        except Exception as exc:  # the converter raises whatever its parsing hits
            raise InvalidOptionError(f"the parameters of tool {name!r}: {exc}") from None
        calls.append(call_rule(tools_format, name, arguments))
    call = " | ".join(f"( {c} )" for c in calls)
    lines = [converter.format_grammar(), f"call ::= {call}"]
    lines.append(_root(tools_format, parallel and tools_format.parallel))
    triggers: tuple[str, ...] = ()
    if choice == "auto":
        # After the calls, anything: the model ends its turn its own way (a GGUF whose
        # end-of-turn marker is not an end-of-generation token writes it as text).
        lines[-1] = lines[-1].replace("root ::= ", "root ::= ( ", 1) + " ) tail"
        lines.append("tail ::= [^\\x00]*")
    elif after:
        # The thought ends with its closing tag, or (Qwen 3 does this) with a call
        # opened inside it: either way the call is constrained from there.
        lines[-1] = (
            lines[-1].replace("root ::= ", f"root ::= ( {literal(after)} {SPACE} )? ( ", 1) + " )"
        )
        triggers = (r"[\s\S]*?(" + re.escape(after) + r"[\s\S]*)",)
        if tools_format.starts and not tools_format.opened:
            triggers += (r"[\s\S]*?(" + re.escape(tools_format.starts[0]) + r"[\s\S]*)",)
    gbnf = "\n".join(lines)
    if choice == "auto":
        if tools_format.kind == "llama3":
            triggers = (r"[\s]*(\{[\s\S]*)",)
        elif tools_format.kind == "muse":
            # A message to a tool (not to=self or to=user) starts the call.
            names = "|".join(re.escape(_name(t)) for t in chosen)
            triggers = (r"[\s\S]*?( to=(?:" + names + ")" + re.escape(MUSE_MESSAGE) + r"[\s\S]*)",)
        elif tools_format.opened:
            # A first line naming a tool, or an opening followed by one later on.
            names = "|".join(re.escape(_name(t)) for t in chosen)
            name_close = tools_format.syntax.name_close if tools_format.syntax else ""
            call_start = "((?:" + names + ")" + re.escape(name_close) + r"[\s\S]*)"
            triggers = (call_start, r"[\s\S]*?" + re.escape(tools_format.opened) + call_start)
        else:
            triggers = (r"[\s\S]*?(" + re.escape(tools_format.starts[0]) + r"[\s\S]*)",)
    return ToolGrammar(gbnf, triggers)


def _root(tools_format: ToolFormat, parallel: bool) -> str:
    """The answer: one call, or several in the format's way of joining them."""
    kind = tools_format.kind
    if kind == "mistral":
        repeat = f'( "," {SPACE} call )*' if parallel else ""
        return f'root ::= "[TOOL_CALLS]" {SPACE} "[" {SPACE} call {repeat} {SPACE} "]"'
    if kind == "deepseek":
        repeat = "call*" if parallel else ""
        return f'root ::= "{DEEPSEEK_CALLS_BEGIN}" call {repeat} "{DEEPSEEK_CALLS_END}"'
    if kind == "generic" and tools_format.array:
        repeat = f'( "," {SPACE} call )*' if parallel else ""
        end = f" {SPACE} {literal(tools_format.end)}" if tools_format.end else ""
        head = f'{literal(tools_format.starts[0])} {SPACE} "["'
        return f'root ::= {head} {SPACE} call {repeat} {SPACE} "]"{end}'
    if kind == "tagged":
        assert tools_format.syntax is not None
        syntax = tools_format.syntax
        # The prompt may have written the first opening already (Functionary).
        first = (
            ""
            if tools_format.opened
            else slotted((syntax.section_open + syntax.call_open).lstrip())
        )
        repeat = ""
        if parallel:
            repeat = f"( {slotted(syntax.separator)} {slotted(syntax.call_open)} call )*"
        return f"root ::= {first} call {repeat} {slotted(syntax.section_close)}"
    if kind == "muse":  # each call its own message
        more = literal(MUSE_MORE + MUSE_START)
        return f"root ::= call ( {more} call )*" if parallel else "root ::= call"
    if kind == "pythonic":
        repeat = '( ", " call )*' if parallel else ""
        end = f" {literal(tools_format.end)}" if tools_format.end else ""
        return f'root ::= {literal(tools_format.starts[0])} "[" call {repeat} "]"{end}'
    if parallel and kind in ("hermes", "generic", "mistral_args", "qwen3_coder", "gemma4"):
        return f"root ::= call ( {SPACE} call )*"
    return "root ::= call"


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
