"""Output formats as llama.cpp grammars: ``"json"`` or a JSON schema.

llama-cpp-python ships both the generic JSON grammar and a JSON-schema-to-GBNF
converter (``llama_cpp.llama_grammar``); we only pick one and turn its failures
into a clear error.
"""

from __future__ import annotations

import json

from localserve.errors import InvalidOptionError

MAX_SCHEMA_BYTES = 64 << 10


def grammar_for(output_format: object) -> str | None:
    """GBNF for an Ollama ``format`` value (None, ``"json"``, or a schema object)."""
    if output_format is None or output_format == "":
        return None
    from llama_cpp import llama_grammar

    if output_format == "json":
        return str(llama_grammar.JSON_GBNF)
    if not isinstance(output_format, dict):
        raise InvalidOptionError('format must be "json" or a JSON schema object')
    schema = json.dumps(output_format)
    if len(schema) > MAX_SCHEMA_BYTES:
        raise InvalidOptionError(f"the JSON schema is over {MAX_SCHEMA_BYTES // 1024} KiB")
    try:
        return str(llama_grammar.json_schema_to_gbnf(schema))
    except RecursionError:
        raise InvalidOptionError("the JSON schema nests too deeply") from None
    except Exception as exc:  # the converter raises whatever its parsing hits
        raise InvalidOptionError(f"unsupported JSON schema: {exc}") from None
