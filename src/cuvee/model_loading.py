"""Load a stored model into PyTorch, whatever its kind.

A base model or a merged fine-tune is a safetensors directory. A fine-tune kept as a LoRA
adapter names its base in the lineage: the base is loaded from the store (its weights checked
against the sha256 recorded at training time) and the adapter applied on top."""

from __future__ import annotations

from pathlib import Path

from cuvee.errors import ModelFileError
from cuvee.store import ModelStore, StoredModel

ADAPTER_DIR = "adapter"


def has_full_weights(model: StoredModel) -> bool:
    """Complete weights, not only an adapter (whose files have the role "adapter")."""
    return model.manifest.file("weights") is not None


def resolve_base(store: ModelStore, model: StoredModel) -> StoredModel:
    """The stored base an adapter-only fine-tune needs, checked to be the one it was trained on."""
    lineage = getattr(model.manifest, "lineage", None) or {}
    base = (lineage.get("base") or {}) if isinstance(lineage, dict) else {}
    name = base.get("name") or model.manifest.parent
    if not name:
        raise ModelFileError(f"model {model.manifest.name!r} has an adapter but names no base")
    stored = store.get(name)
    expected = base.get("weights_sha256")
    weights = stored.manifest.file("weights")
    if expected and weights is not None and weights.sha256 != expected:
        raise ModelFileError(
            f"model {model.manifest.name!r} was trained on a different {name!r} "
            f"(weights sha256 {expected[:12]}…, the store has {weights.sha256[:12]}…)",
            hint=f"pull or add the original {name!r}, or retrain",
        )
    return stored


def load_causal_lm(store: ModelStore, model: StoredModel, *, dtype=None, merge: bool = True):
    """A transformers causal LM for a stored model; adapters are merged unless ``merge=False``
    (then a peft model is returned)."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = dtype or torch.float32
    if has_full_weights(model):
        return _from_dir(AutoModelForCausalLM, model.path, dtype)
    adapter = model.path / ADAPTER_DIR
    if not adapter.is_dir():
        raise ModelFileError(
            f"model {model.manifest.name!r} has neither weights nor an adapter",
            hint=f"check it with `cuvee models verify {model.manifest.name}`",
        )
    base = resolve_base(store, model)
    lm = load_causal_lm(store, base, dtype=dtype)
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(lm, str(adapter))
    return peft_model.merge_and_unload() if merge else peft_model


def _from_dir(cls, path: Path, dtype):
    from transformers import AutoConfig

    from cuvee.model_import import drop_gguf_quantization

    try:
        config = AutoConfig.from_pretrained(str(path))
        # Stores written by cuvee 0.1.0 kept the GGUF's quantization_config in config.json.
        drop_gguf_quantization(config)
        model = _cast_while_reading(cls, path, config, dtype)
        if model is not None:
            return model
        return cls.from_pretrained(
            str(path), config=config, dtype=dtype, attn_implementation="sdpa", use_safetensors=True
        )
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: cannot load the model: {exc}") from exc


def _cast_while_reading(cls, path: Path, config, dtype):
    """The model from weights stored in another dtype (an fp32 base trained in bf16), read and
    cast a slice at a time (safetensors_cast: a gigabyte less at the peak for gemma3-270m);
    None when the weights need no cast or this reader cannot read them."""
    from transformers import GenerationConfig
    from transformers.models.auto.auto_factory import _get_model_class

    from cuvee import safetensors_cast

    files = safetensors_cast.checkpoint_files(path)
    if files is None or not safetensors_cast.needs_cast(files, dtype):
        return None
    state = safetensors_cast.read_cast(files, dtype)
    if state is None:
        return None
    model_class = _get_model_class(config, cls._model_mapping)
    # from_pretrained with a state dict and no path: the same key handling, tying and eval
    # mode as from a directory, and the tensors read here become the parameters (no copy).
    model = model_class.from_pretrained(
        None, config=config, state_dict=state, dtype=dtype, attn_implementation="sdpa"
    )
    if (path / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(path))
    # where it came from, as a load from the directory records it (peft reads it when saving)
    model.config._name_or_path = model.name_or_path = str(path)
    return model
