"""The daemon: an ASGI app (app.py) with Ollama routes (routes/native.py), OpenAI routes
(routes/openai.py) and operations routes (routes/ops.py)."""
