"""What the daemon and the runner process share: the contract between them and the chat
logic both sides need.

- ``protocol``: the frames over the runner's pipe, typed (the load, the ready reply,
  jobs, events, embed and stats results, error kinds); JSON exists only at the pipe.
- ``framing``: how those frames travel: a length, then a JSON object.
- ``options``: load and sampling options, validated.
- ``templates`` and ``template_sandbox``: chat templates rendered in a sandboxed Jinja
  (its environment in ``template_environment``, its limits in ``template_limits``).
- ``chat``: what a template can do (tool-call format, thinking tags) and the parsers
  that split an answer into text, thinking and tool calls.

Nothing here loads llama.cpp: the daemon imports this package, and only the engine
(the runner process) imports llama_cpp. The grammars that enforce tool calls and JSON
formats use llama-cpp-python's schema converter, so they live in the engine.
"""
