"""Generations cached under ``$CUVEE_HOME/eval/cache/``, keyed by what determines them: the
model's identity (content sha256 for stored models), the suite's sha256 and version, and the
generation settings. A re-run of the same comparison reads them back without touching a model,
and any change to weights, prompts or settings misses the cache instead of reusing stale text."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

CACHE_VERSION = 1


def cache_key(model: dict[str, Any], suite: dict[str, Any], settings: dict[str, Any]) -> str:
    blob = json.dumps(
        {"v": CACHE_VERSION, "model": model, "suite": suite, "settings": settings},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


class GenerationCache:
    def __init__(self, home: Path) -> None:
        self.root = Path(home) / "eval" / "cache"

    def _path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def get(self, key: str, n: int) -> list[str] | None:
        """The cached outputs for ``key`` if there are ``n`` of them; None otherwise (a missing,
        unreadable or partial entry is a miss, never an error)."""
        try:
            data = json.loads(self._path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        outputs = data.get("outputs") if isinstance(data, dict) else None
        if not isinstance(outputs, list) or len(outputs) != n:
            return None
        if not all(isinstance(o, str) for o in outputs):
            return None
        return outputs

    def put(self, key: str, outputs: list[str], record: dict[str, Any]) -> None:
        """Write atomically (temporary file, then rename), so an interrupted run never leaves
        a half entry that a later run would read."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({**record, "outputs": outputs}, fh, ensure_ascii=False)
        os.replace(tmp, self._path(key))
