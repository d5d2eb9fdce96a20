"""`--format hf`: a Hugging Face model directory (safetensors, config, tokenizer, chat template)
that transformers, vLLM or TGI load; with `--adapter-only`, the PEFT adapter directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cuvee.export.base import Format
from cuvee.export.source import ExportSource
from cuvee.progress import Reporter


def _write(source: ExportSource, out: Path, quant, adapter_only: bool, reporter: Reporter) -> None:
    out.mkdir(parents=True)
    if adapter_only:
        shutil.copytree(source.adapter_dir, out, dirs_exist_ok=True)
        config_file = out / "adapter_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = source.base.manifest.name
        config_file.write_text(json.dumps(config, indent=1), encoding="utf-8")
    else:
        reporter.step(f"merging and saving {source.name}")
        source.merged.save_pretrained(str(out), safe_serialization=True)
    source.copy_tokenizer_files(out)
    card = source.model.path / "MODEL_CARD.md"
    if card.is_file():
        shutil.copy2(card, out / "README.md")


FORMAT = Format(
    name="hf",
    description="a Hugging Face directory (safetensors) for transformers, vLLM, TGI",
    quants=(),
    suffix="",
    write=_write,
    adapter_only=True,
)
