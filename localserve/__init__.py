"""localserve: run GGUF language models locally behind Ollama's and OpenAI's APIs."""

__version__ = "0.1.0"
