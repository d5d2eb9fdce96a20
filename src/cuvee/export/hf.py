"""`--format hf`: a Hugging Face model directory (safetensors, config, tokenizer, chat template)
that transformers, vLLM or TGI load; with `--adapter-only`, the PEFT adapter directory.

Weights are written in bf16 unless `--quant f32` asks otherwise: the dtype Gemma and Llama
checkpoints are published in, half the size of the fp32 the model is merged in, and what vLLM
and TGI then run (their default dtype is the config's). f16 is not offered: Gemma models are
known to overflow its range."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cuvee.export.base import Format
from cuvee.export.source import ExportSource
from cuvee.progress import Reporter

DTYPES = {"bf16": "bfloat16", "f32": "float32"}


def _write(source: ExportSource, out: Path, quant, adapter_only: bool, reporter: Reporter) -> None:
    import torch

    dtype = getattr(torch, DTYPES[quant])
    out.mkdir(parents=True)
    if adapter_only:
        shutil.copytree(source.adapter_dir, out, dirs_exist_ok=True)
        _cast_safetensors(out / "adapter_model.safetensors", dtype)
        config_file = out / "adapter_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = source.base.manifest.name
        config_file.write_text(json.dumps(config, indent=1), encoding="utf-8")
    else:
        reporter.step(f"merging and saving {source.name} in {quant}")
        source.merged.to(dtype).save_pretrained(str(out), safe_serialization=True)
    source.copy_tokenizer_files(out)
    card = source.model.path / "MODEL_CARD.md"
    if card.is_file():
        shutil.copy2(card, out / "README.md")


def _cast_safetensors(path: Path, dtype) -> None:
    """Rewrite a safetensors file with its floating-point tensors in ``dtype``, keeping its
    metadata (PEFT reads the format from it)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (no __iter__)
    cast = {k: t.to(dtype) if t.is_floating_point() else t for k, t in tensors.items()}
    save_file(cast, str(path), metadata=metadata)


FORMAT = Format(
    name="hf",
    description="a Hugging Face directory (safetensors) for transformers, vLLM, TGI",
    quants=tuple(DTYPES),
    suffix="",
    write=_write,
    adapter_only=True,
)
