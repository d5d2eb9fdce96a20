"""Which file an engine runs for a model name: a GGUF path as given; for a stored model, its
newest matching GGUF export, the GGUF it was pulled as, or a q8_0 export made on first use."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cuvee.errors import ConfigError
from cuvee.progress import Reporter
from cuvee.store import ModelStore

# Preference among recorded GGUF exports: q8_0 keeps a fine-tune (see README, Export) at a
# quarter of f32's memory traffic; then the float ones; q4_k_m last.
_EXPORT_ORDER = ("q8_0", "f16", "f32", "q4_k_m")


@dataclass(frozen=True)
class Target:
    engine: str
    path: Path  # a .gguf file for llamacpp, a model directory for hf
    model: str  # the name reported to the user (and by the server)
    # The family's template, for a GGUF that embeds none (a pretrained base as pulled).
    chat_template: str | None = None


def choose_target(
    settings, name: str, engine: str, reporter: Reporter, quant: str | None = None
) -> Target:
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise ConfigError(f"{path}: no such GGUF file")
        if engine != "llamacpp":
            raise ConfigError("a .gguf file runs on the llamacpp engine", hint="--engine llamacpp")
        return Target("llamacpp", path, path.stem)
    store = ModelStore(settings.models_dir)
    stored = store.get(name)
    if engine == "hf":
        from cuvee.model_loading import has_full_weights

        if not has_full_weights(stored):
            raise ConfigError(
                f"{name!r} stores a LoRA adapter; the hf engine runs complete weights",
                hint=f"cuvee export {name} --format hf -o DIR, then run DIR's model, or use "
                "--engine llamacpp",
            )
        return Target("hf", stored.path, name)
    if engine != "llamacpp":
        raise ConfigError(f"unknown engine {engine!r}", hint="llamacpp or hf")
    from cuvee.export.formats import export, find_export

    for q in (quant,) if quant else _EXPORT_ORDER:
        found = find_export(stored, "gguf", q)
        if found is not None:
            return Target("llamacpp", found, name)
    own = stored.manifest.file("gguf")
    if own is not None and quant is None:
        from cuvee.chat_template import get_template

        template = get_template(stored.manifest.chat_template).jinja
        return Target("llamacpp", stored.path / own.path, name, template)
    q = quant or "q8_0"
    reporter.step(f"{name} has no GGUF yet: exporting {q} once (cuvee export {name})")
    entry = export(settings, store, name, "gguf", quant=q, reporter=reporter)
    return Target("llamacpp", Path(entry["path"]), name)
