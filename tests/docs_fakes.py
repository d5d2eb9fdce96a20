"""Test doubles for document search: a deterministic embedding backend (hashed bag of terms,
so similar texts get similar vectors without any model) and scripted generators."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np

from cuvee.docs.textnorm import terms

SAMPLE = Path(str(resources.files("cuvee.docs") / "sample"))


def copy_sample(target: Path) -> Path:
    """A private copy of the shipped sample documents, safe to edit."""
    shutil.copytree(SAMPLE / "docs", target)
    return target


class HashingBackend:
    """Implements cuvee.docs.embedders.Backend; counts what it embeds so tests can tell
    which chunks were (re-)embedded."""

    def __init__(self, dim: int = 64, identity: str = "hashing-test@1") -> None:
        self.dim = dim
        self.identity = identity
        self.embedded: list[str] = []

    def embed(self, texts: Sequence[str], progress=None) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for term in terms(text):
                bucket = int(hashlib.md5(term.encode()).hexdigest(), 16) % self.dim
                out[row, bucket] += 1.0
            norm = np.linalg.norm(out[row])
            out[row] = out[row] / norm if norm else out[row]
        self.embedded.extend(texts)
        if progress:
            progress(len(texts))
        return out


class Scripted:
    """A generator returning a fixed answer, recording the messages it was given."""

    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.calls: list[list[dict]] = []

    def __call__(self, messages: list[dict]) -> str:
        self.calls.append(messages)
        return self.answer


def split_sample(tmp_path: Path) -> tuple[Path, Path]:
    """The sample documents in two folders of three."""
    folder = copy_sample(tmp_path / "handbook")
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    for n, path in enumerate(sorted(folder.iterdir())):
        path.rename((first if n % 2 else second) / path.name)
    return first, second
