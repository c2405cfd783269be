"""The runner process, and only it: one child process per loaded model
(``python -m localserve.engine.runner``), the only package that imports llama_cpp.
The daemon never imports this package (docs/architecture.md)."""
