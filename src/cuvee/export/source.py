"""What every exporter reads from a stored model: its weights (a LoRA adapter merged into its
base, or kept apart), its config, tokenizer files, chat template and licence."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from cuvee.chat_template import ChatTemplate, get_template
from cuvee.model_loading import ADAPTER_DIR, has_full_weights, load_causal_lm, resolve_base
from cuvee.store import ModelStore, StoredModel
from cuvee.tokenizer import special_tokens

# The files besides the weights that let another runtime tokenize and format like training did.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "generation_config.json",
)


@dataclass
class ExportSource:
    store: ModelStore
    model: StoredModel

    @property
    def name(self) -> str:
        return self.model.manifest.name

    @property
    def is_adapter(self) -> bool:
        return not has_full_weights(self.model) and (self.model.path / ADAPTER_DIR).is_dir()

    @cached_property
    def base(self) -> StoredModel:
        """The model whose full weights this one is (itself, or the base of its adapter)."""
        return resolve_base(self.store, self.model) if self.is_adapter else self.model

    @property
    def adapter_dir(self) -> Path:
        return self.model.path / ADAPTER_DIR

    @property
    def files_dir(self) -> Path:
        """Where the tokenizer and config files are (fine-tunes carry copies of their base's)."""
        return self.model.path if (self.model.path / "config.json").is_file() else self.base.path

    @cached_property
    def config(self) -> dict[str, Any]:
        config = json.loads((self.files_dir / "config.json").read_text(encoding="utf-8"))
        config.pop("quantization_config", None)  # left by GGUF conversion; not how it is stored
        return config

    @property
    def template(self) -> ChatTemplate:
        return get_template(self.model.manifest.chat_template)

    @property
    def bos_eos(self) -> tuple[str, str]:
        return special_tokens(self.files_dir)

    @property
    def licence_id(self) -> str | None:
        return self.model.manifest.licence.id

    def copy_tokenizer_files(self, out: Path) -> None:
        """The tokenizer files the model has, and its chat template as chat_template.jinja."""
        import shutil

        for name in TOKENIZER_FILES:
            if (self.files_dir / name).is_file():
                shutil.copy2(self.files_dir / name, out / name)
        (out / "chat_template.jinja").write_text(self.template.jinja, encoding="utf-8")

    @cached_property
    def merged(self):
        """The full model in fp32, an adapter merged into its base."""
        import torch

        model = load_causal_lm(self.store, self.model, dtype=torch.float32, merge=True)
        model.eval()
        return model
