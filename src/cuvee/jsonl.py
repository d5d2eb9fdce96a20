"""JSON Lines files written by people (suites, QA sets): one reader, so every bad line is
reported the same way, as ``file:line`` with what is wrong, in the caller's error class."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cuvee.errors import CuveeError


def read_objects(
    path: Path, error: type[CuveeError] = CuveeError, what: str = "file"
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; an unreadable file, a line that is not
    JSON or not an object raises ``error`` naming the file (and line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read the {what}: {exc}") from exc
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{path}:{number}: not valid JSON: {exc.msg}") from exc
        if not isinstance(record, dict):
            raise error(f"{path}:{number}: expected a JSON object")
        yield number, record
