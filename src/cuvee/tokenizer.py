"""A stored model's tokenizer files, read with `tokenizers` alone (no torch, no transformers)."""

from __future__ import annotations

import json
from pathlib import Path

from cuvee.errors import DataError


def load_tokenizer(model_dir: Path):
    from tokenizers import Tokenizer

    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise DataError(f"{model_dir}: the model has no tokenizer.json")
    return Tokenizer.from_file(str(path))


def special_tokens(model_dir: Path) -> tuple[str, str]:
    """The BOS and EOS strings of a stored model's tokenizer ("" where it declares none)."""
    config_file = model_dir / "tokenizer_config.json"
    if not config_file.is_file():
        return "", ""
    config = json.loads(config_file.read_text(encoding="utf-8"))

    def text(value: object) -> str:
        if isinstance(value, dict):
            return str(value.get("content", ""))
        return str(value or "")

    return text(config.get("bos_token")), text(config.get("eos_token"))
