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

    @cached_property
    def merged(self):
        """The full model in fp32, an adapter merged into its base."""
        import torch

        model = load_causal_lm(self.store, self.model, dtype=torch.float32, merge=True)
        model.eval()
        return model
