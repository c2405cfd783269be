"""The wire models, one module per API (``ollama``, ``openai``): request bodies that build
the typed job (``to_job``) and the responses the routes send, typed; ``base`` has the
rules every request and response follows, ``answer`` what every API's answers share."""
