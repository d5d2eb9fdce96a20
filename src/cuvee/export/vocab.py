"""A Hugging Face tokenizer.json as llama.cpp's vocabulary metadata.

Supported: SentencePiece-style BPE with byte fallback (Gemma, Llama 1/2, Mistral, TinyLlama),
which llama.cpp runs as its "llama" (SPM) tokenizer. SPM merges the adjacent pair whose joined
token scores highest, so each token's score here is minus the rank of the first BPE merge that
makes it: the two algorithms then merge in the same order. Byte-level BPE (GPT-2 / Llama 3
style) needs llama.cpp's pre-tokenizer identification and is refused with a clear error."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from cuvee.errors import ModelFileError

# llama.cpp token types (gguf.TokenType values), written as plain ints.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE = 1, 2, 3, 4, 6
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


@dataclass
class Vocab:
    model: str  # tokenizer.ggml.model
    tokens: list[str]
    scores: list[float]
    types: list[int]
    add_space_prefix: bool
    ids: dict[str, int]

    def id_of(self, token: str) -> int | None:
        return self.ids.get(token)


def read_vocab(model_dir: Path, vocab_size: int) -> Vocab:
    """The vocabulary of ``model_dir/tokenizer.json``, padded to the model's ``vocab_size``."""
    path = model_dir / "tokenizer.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        model = data["model"]
    except (OSError, ValueError, KeyError) as exc:
        raise ModelFileError(f"{path}: not a readable Hugging Face tokenizer: {exc}") from exc
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        raise ModelFileError(
            f"{path}: only SentencePiece-style BPE tokenizers with byte fallback can be "
            f"exported to GGUF for now (this one is {model.get('type')}"
            f"{', byte-level' if model.get('type') == 'BPE' else ''})",
            hint="Gemma, Llama 2, Mistral and TinyLlama tokenizers are of this kind",
        )
    size = max(vocab_size, len(model["vocab"]))
    tokens: list[str | None] = [None] * size
    for text, i in model["vocab"].items():
        if i < size:
            tokens[i] = text
    added = {t["id"]: t for t in data.get("added_tokens", [])}
    for i, tok in added.items():
        if i < size:
            tokens[i] = tok["content"]

    scores = [0.0] * size
    ids = {t: i for i, t in enumerate(tokens) if t is not None}
    scored: set[int] = set()
    for rank, merge in enumerate(model.get("merges", [])):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        i = ids.get(left + right)
        if i is not None and i not in scored:
            scores[i] = -float(rank)
            scored.add(i)

    unk = model.get("unk_token")
    types = []
    for i, text in enumerate(tokens):
        if text is None:
            types.append(USER_DEFINED)
        elif i in added:
            types.append(CONTROL if added[i].get("special") else USER_DEFINED)
        elif text == unk:
            types.append(UNKNOWN)
        elif _BYTE_TOKEN.fullmatch(text):
            types.append(BYTE)
        else:
            types.append(NORMAL)
    # Unused slots (a model whose embedding is larger than its vocabulary) get placeholders.
    filled = [t if t is not None else f"[PAD{i}]" for i, t in enumerate(tokens)]
    return Vocab(
        model="llama",
        tokens=filled,
        scores=scores,
        types=types,
        add_space_prefix=_prepends_space(data),
        ids={t: i for i, t in enumerate(filled)},
    )


def _prepends_space(data: dict) -> bool:
    """Whether the tokenizer puts "▁" before the text (Llama 2 does, Gemma does not)."""

    def walk(node) -> bool:
        if isinstance(node, dict):
            if node.get("type") == "Prepend":
                return True
            if node.get("type") == "Metaspace":
                return node.get("prepend_scheme", "always") != "never"
            return any(walk(v) for v in node.values())
        if isinstance(node, list):
            return any(walk(v) for v in node)
        return False

    return walk(data.get("normalizer")) or walk(data.get("pre_tokenizer"))
