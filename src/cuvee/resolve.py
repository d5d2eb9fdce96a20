"""From a model name to what an engine runs. One answer for every caller (``cuvee run`` and
``chat``, the server's engine pool, evaluation, the document answerer, the benchmarks):

- a path ending in ``.gguf`` runs as given, on an engine that runs GGUF files;
- a stored model runs on a GGUF engine from its newest GGUF export (q8_0 first), else the GGUF
  it was pulled as, else a q8_0 export made once, now; on a weights engine from its directory,
  when it stores complete weights;
- a stored LoRA fine-tune can also be served as ``BASE:ADAPTER`` over its base's engine, from
  its GGUF LoRA file (exported once, on first use), when llama.cpp can apply it.

The engines know nothing of the store, and the store nothing of engines; this module is where
the two meet, above both in the pipeline (data < train < export < engine < resolve < eval, docs,
serve < cli)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cuvee.engine import DEFAULT_ENGINE, get_engine, open_engine
from cuvee.errors import ConfigError, CuveeError
from cuvee.progress import Reporter, SilentReporter
from cuvee.store import ModelStore, StoredModel

if TYPE_CHECKING:
    from cuvee.config import Settings
    from cuvee.engine.base import Engine

# Preference among recorded GGUF exports: q8_0 keeps a fine-tune (see README, Export) at a
# quarter of f32's memory traffic; then the float ones; q4_k_m last.
EXPORT_ORDER = ("q8_0", "f16", "f32", "q4_k_m")
# The export made on first use when a stored model has no GGUF yet.
FIRST_USE_QUANT = "q8_0"


@dataclass(frozen=True)
class Target:
    engine: str
    path: Path  # a .gguf file for a GGUF engine, a model directory for a weights engine
    model: str  # the name reported to the user (and by the server)
    # The family's chat template: the engine's fallback when the GGUF embeds none (a
    # pretrained base as pulled). None for a bare GGUF path.
    chat_template: str | None = None


def target(
    settings: Settings,
    name: str,
    engine: str = DEFAULT_ENGINE,
    reporter: Reporter | None = None,
    quant: str | None = None,
) -> Target:
    """What ``engine`` runs for model ``name``; exports a GGUF once if a stored model has none."""
    reporter = reporter or SilentReporter()
    runs = get_engine(engine).runs
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise ConfigError(f"{path}: no such GGUF file")
        if runs != "gguf":
            raise ConfigError(
                f"a .gguf file runs on a GGUF engine, not {engine}", hint="--engine llamacpp"
            )
        return Target(engine, path, path.stem)
    store = ModelStore(settings.models_dir)
    stored = store.get(name)
    template = family_template(stored)
    if runs == "weights":
        from cuvee.model_loading import has_full_weights

        if not has_full_weights(stored):
            raise ConfigError(
                f"{name!r} stores a LoRA adapter; the {engine} engine runs complete weights",
                hint=f"cuvee export {name} --format hf -o DIR, then run DIR's model, or use "
                "--engine llamacpp",
            )
        return Target(engine, stored.path, name, template)
    from cuvee.export.formats import export, find_export

    for q in (quant,) if quant else EXPORT_ORDER:
        found = find_export(stored, "gguf", q)
        if found is not None:
            return Target(engine, found, name, template)
    own = stored.manifest.file("gguf")
    if own is not None and quant is None:
        return Target(engine, stored.path / own.path, name, template)
    q = quant or FIRST_USE_QUANT
    reporter.step(f"{name} has no GGUF yet: exporting {q} once (cuvee export {name})")
    entry = export(settings, store, name, "gguf", quant=q, reporter=reporter)
    return Target(engine, Path(entry["path"]), name, template)


def open_model(
    settings: Settings,
    name: str,
    engine: str = DEFAULT_ENGINE,
    reporter: Reporter | None = None,
    *,
    threads: int | None = None,
    **options: Any,
) -> tuple[Target, Engine]:
    """The target for ``name`` and an engine opened on it. ``threads`` and the family's chat
    template are passed to engines that take them (``n_threads``, ``chat_template``); other
    ``options`` go to the engine as given, so an option it lacks is a clear ConfigError."""
    found = target(settings, name, engine, reporter)
    accepted = get_engine(engine).options()
    extra: dict[str, Any] = {}
    if threads and "n_threads" in accepted:
        extra["n_threads"] = threads
    if found.chat_template is not None and "chat_template" in accepted:
        extra["chat_template"] = found.chat_template
    return found, open_engine(engine, found.path, **{**extra, **options})


def family_template(stored: StoredModel) -> str | None:
    """The chat template of a stored model's family, or None when the family is unknown."""
    from cuvee.chat_template import get_template

    try:
        return get_template(stored.manifest.chat_template).jinja
    except CuveeError:
        return None


# -- LoRA fine-tunes served over their base ---------------------------------------------------


def adapter_problem(stored: StoredModel) -> str | None:
    """Why a stored model cannot be served as a llama.cpp LoRA over its base, or None: the
    rule is the GGUF LoRA exporter's (``export.gguf_format.adapter_refusal``)."""
    from cuvee.export.gguf_format import adapter_refusal
    from cuvee.model_loading import ADAPTER_DIR, has_full_weights

    manifest = stored.manifest
    if manifest.parent is None or not (stored.path / ADAPTER_DIR).is_dir():
        return f"'{manifest.name}' is not a LoRA fine-tune"
    if has_full_weights(stored):
        return f"'{manifest.name}' stores merged weights, not only its adapter"
    try:
        config = json.loads((stored.path / ADAPTER_DIR / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return f"'{manifest.name}' has no readable adapter config"
    refusal = adapter_refusal(config)
    if refusal is not None:
        why, hint = refusal
        return f"'{manifest.name}' {why}; {hint}"
    return None


def adapters(settings: Settings) -> list[tuple[str, str]]:
    """(base, adapter) for each stored LoRA fine-tune servable over its stored base."""
    models, _ = ModelStore(settings.models_dir).list()
    names = {m.manifest.name for m in models}
    return [
        (m.manifest.parent, m.manifest.name)
        for m in models
        if m.manifest.parent in names and adapter_problem(m) is None
    ]


def adapter_file(settings: Settings, name: str) -> Path:
    """The adapter's GGUF LoRA file: its recorded export, or one exported now (once)."""
    from cuvee.export.formats import export, find_export

    store = ModelStore(settings.models_dir)
    found = find_export(store.get(name), "gguf", adapter_only=True)
    if found is not None:
        return found
    entry = export(settings, store, name, "gguf", adapter_only=True, reporter=SilentReporter())
    return Path(entry["path"])
