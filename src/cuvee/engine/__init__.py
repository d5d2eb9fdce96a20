"""Inference engines: one interface (``cuvee.engine.base``) over llama.cpp with continuous
batching and over transformers, so the CLI, the server and evaluation drive any model the same
way. This is the registry: an engine is a name, what it runs, and a class imported only when
the engine is opened, so listing engines (``--help``) loads neither torch nor llama.cpp and no
implementation module is imported back by the package."""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cuvee.errors import ConfigError

if TYPE_CHECKING:
    from cuvee.engine.base import Engine

# What an engine opens: a GGUF file, or a model directory of complete weights (safetensors).
Runs = Literal["gguf", "weights"]


@dataclass(frozen=True)
class EngineSpec:
    name: str
    runs: Runs
    module: str  # imported on first use
    cls: str
    summary: str

    def load(self) -> type:
        return getattr(importlib.import_module(self.module), self.cls)

    def options(self) -> list[str]:
        """The keyword-only options its constructor takes (``n_threads``, ``chat_template``...)."""
        return [
            p.name
            for p in inspect.signature(self.load().__init__).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        ]


ENGINES: dict[str, EngineSpec] = {}
# The engine a model runs on when none is named (run, chat, serve, resolve).
DEFAULT_ENGINE = "llamacpp"


def register(spec: EngineSpec) -> None:
    ENGINES[spec.name] = spec


def get_engine(name: str) -> EngineSpec:
    try:
        return ENGINES[name]
    except KeyError:
        raise ConfigError(
            f"unknown engine {name!r}", hint=f"one of: {', '.join(ENGINES)}"
        ) from None


def open_engine(name: str, model: str | Path, **options: Any) -> Engine:
    """Open engine ``name`` on a model (a GGUF file or a model directory, as the engine runs);
    an unknown engine or option is a ConfigError naming the accepted ones."""
    spec = get_engine(name)
    accepted = spec.options()
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"the {name} engine has no option {', '.join(unknown)}",
            hint=f"its options: {', '.join(accepted)}",
        )
    return spec.load()(model, **options)


register(
    EngineSpec(
        "llamacpp",
        "gguf",
        "cuvee.engine.llamacpp",
        "LlamaCppEngine",
        "llama.cpp on a GGUF, continuous batching over many requests (the default)",
    )
)
register(
    EngineSpec(
        "hf",
        "weights",
        "cuvee.engine.hf",
        "HFEngine",
        "transformers on complete weights, one request at a time (a reference)",
    )
)
