"""Tool calls and thinking: what a model's chat template says it can do, and how to
read its answers.

- :mod:`.formats` finds, by rendering the template with a sample call and a sample
  reasoning turn, whether a model takes tools, which call syntax it writes, and
  whether (and with which tags) it thinks. No model names are involved.
- :mod:`.parse` splits a streamed answer into text, thinking and tool calls for
  the format found.
- :mod:`.tool_grammar` builds the llama.cpp grammar that makes a call valid JSON
  for its tool's schema (whole output for ``tool_choice: required``; lazy, from the
  call's first marker, for ``auto``).

Nothing here imports llama_cpp: the daemon uses detection for ``/api/show`` and to
refuse requests before a model loads.
"""
