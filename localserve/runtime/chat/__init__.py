"""Tool calls and thinking: what a model's chat template says it can do, and how to
read its answers.

- :mod:`.formats` finds, by rendering the template with a sample call and a sample
  reasoning turn, whether a model takes tools, which call syntax it writes, and
  whether (and with which tags) it thinks. No model names are involved: the call
  syntax is learnt from what the template writes (:mod:`.learn`) and kept as data
  (:mod:`.syntax`).
- :mod:`.parse` splits a streamed answer into text, thinking and tool calls for
  the format found; :mod:`.calls` reads the calls themselves.
- the engine's ``tool_grammar`` (with ``call_rules``) builds the llama.cpp grammar
  that makes a call valid for its tool's schema in the format's syntax (whole
  output for ``tool_choice: required``; lazy, from the call's first marker, for
  ``auto``).

Nothing here imports llama_cpp: the daemon uses detection for ``/api/show`` and to
refuse requests before a model loads.
"""
