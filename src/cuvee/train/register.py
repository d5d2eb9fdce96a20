"""The end of a run: the fine-tuned model written into the store in one atomic step.

The directory holds the LoRA adapter (and merged weights when asked for), the base's tokenizer
and config, a generation config whose stop tokens include the template's end-of-turn, the chat
template, MODEL_CARD.md and the manifest with the lineage. It appears in the store only once all
of that is written."""

from __future__ import annotations

import json
import shutil
from typing import Any

import torch

from cuvee.chat_template import get_template
from cuvee.licences import Licence
from cuvee.model_loading import ADAPTER_DIR
from cuvee.store import (
    Manifest,
    ModelStore,
    Source,
    StoredModel,
    describe_files,
    utc_now,
    write_manifest,
)
from cuvee.train.lineage import (
    commercial_use,
    contributors,
    library_versions,
    method_label,
    model_card,
)

COPIED = ("tokenizer.json", "tokenizer_config.json", "config.json", "special_tokens_map.json")


def _generation_config(base_dir, end_of_turn_id: int) -> dict[str, Any]:
    path = base_dir / "generation_config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    eos = config.get("eos_token_id")
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    if end_of_turn_id not in ids:
        ids.append(end_of_turn_id)
    config["eos_token_id"] = ids
    return config


def register_model(
    store: ModelStore,
    prepared,
    model: torch.nn.Module,
    summary: dict[str, Any],
    *,
    replace: bool,
    merge: bool,
) -> StoredModel:
    recipe = prepared.recipe
    base = prepared.base
    template = get_template(prepared.template)
    from cuvee.tokenizer import load_tokenizer

    eot_id = load_tokenizer(base.path).token_to_id(template.end_of_turn)
    verdict = commercial_use(base.manifest.name, base.manifest.licence, prepared.sources)
    weights = base.manifest.file("weights")
    lineage: dict[str, Any] = {
        "base": {
            "name": base.manifest.name,
            "weights_sha256": weights.sha256 if weights else None,
            "licence": base.manifest.licence.model_dump(),
            "upstream": base.manifest.source.upstream,
        },
        "data": [s.to_json() for s in prepared.sources],
        "recipe": recipe.resolved(),
        "seed": recipe.seed,
        "versions": library_versions(),
        "run": summary,
        "contributors": contributors(prepared.sources, recipe.authors),
        "chat_template": template.family,
    }
    with store.stage(recipe.name, replace=replace) as staging:
        is_peft = hasattr(model, "peft_config")
        if is_peft:
            model.save_pretrained(str(staging / ADAPTER_DIR))
        if merge or not is_peft:
            _save_full(store, base, model, staging, is_peft)
        for name in COPIED:
            src = base.path / name
            if src.is_file() and not (staging / name).exists():
                shutil.copy2(src, staging / name)
        (staging / "generation_config.json").write_text(
            json.dumps(_generation_config(base.path, eot_id), indent=1), encoding="utf-8"
        )
        (staging / "chat_template.jinja").write_text(template.jinja, encoding="utf-8")
        (staging / "MODEL_CARD.md").write_text(
            model_card(recipe.name, lineage, verdict), encoding="utf-8"
        )
        manifest = Manifest(
            name=recipe.name,
            kind="fine-tuned",
            architecture=base.manifest.architecture,
            model_type=base.manifest.model_type,
            parameters=base.manifest.parameters,
            files=describe_files(staging),
            source=Source(type="training", path=summary["run_dir"]),
            licence=_derived_licence(base.manifest.licence, verdict),
            chat_template=template.family,
            parent=base.manifest.name,
            created_at=utc_now(),
            description=recipe.description
            or f"{method_label(recipe.resolved())} fine-tune of {base.manifest.name}",
            lineage=lineage,
            commercial_use=verdict.allowed,
            commercial_use_reasons=verdict.reasons,
        )
        write_manifest(staging, manifest)
    return store.get(recipe.name)


def _derived_licence(base: Licence, verdict) -> Licence:
    """The weights keep the base's licence; the data can only take rights away."""
    if verdict.allowed is base.commercial_use:
        return base
    note = "; ".join(verdict.reasons)
    return base.model_copy(
        update={
            "commercial_use": verdict.allowed,
            "notes": (base.notes + " " if base.notes else "") + f"restricted by training: {note}",
        }
    )


def _save_full(store, base, model: torch.nn.Module, directory, is_peft: bool) -> None:
    """Merged (or fully trained) weights in fp32 safetensors, like the base. An adapter is
    merged into a fresh fp32 copy of the base, not into the bf16 copy training used."""
    if is_peft:
        from peft import PeftModel

        from cuvee.model_loading import load_causal_lm

        fresh = load_causal_lm(store, base, dtype=torch.float32)
        lm = PeftModel.from_pretrained(fresh, str(directory / ADAPTER_DIR)).merge_and_unload()
    else:
        lm = model
    lm.to(torch.float32).save_pretrained(str(directory), safe_serialization=True)
