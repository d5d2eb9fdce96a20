"""Inference engines: one interface (cuvee.engine.base) over llama.cpp with continuous batching
and over transformers, so the CLI, the server and evaluation drive any model the same way."""
