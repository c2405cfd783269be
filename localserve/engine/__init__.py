"""The runner: one child process per loaded model; the only package that imports llama_cpp."""
