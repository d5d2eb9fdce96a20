"""`cuvee serve`: an OpenAI-compatible HTTP server over cuvee's engines, so any OpenAI client
(SDKs, LangChain, curl) can use a model the team trained, offline.

One module per job: ``app`` builds the FastAPI app from explicit state, ``schemas`` validates
requests, ``openai_chat`` translates between OpenAI and engine requests and events,
``openai_embeddings`` answers /v1/embeddings with :mod:`cuvee.embeddings`, ``models``
loads and unloads engines, ``keys`` stores API keys and enforces their limits, ``metrics``
counts for Prometheus, ``errors`` gives every failure OpenAI's error shape."""

from __future__ import annotations
