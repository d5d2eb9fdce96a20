"""Writing records back to files, atomically: a failed write never leaves a half file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from cuvee.data.records import Conversation
from cuvee.data.validate import SIDECAR_SUFFIX
from cuvee.errors import DataError


def to_openai(record: Conversation) -> dict[str, Any]:
    """OpenAI chat format; context is folded into the user turn, as training sees it. Plain-text
    records have no messages and stay ``{"text": ...}``, which the readers accept alongside."""
    row: dict[str, Any] = (
        {"text": record.text} if record.is_text else {"messages": record.messages()}
    )
    for key in ("category", "split"):
        if getattr(record, key):
            row[key] = getattr(record, key)
    if record.metadata:
        row["metadata"] = record.metadata
    return row


def to_dolly(record: Conversation) -> dict[str, Any]:
    """Dolly format; only single-turn records without a system prompt fit it."""
    if record.is_text or len(record.turns) != 2 or record.system:
        raise DataError(f"{record.origin}: only single-turn records can be written as Dolly")
    row: dict[str, Any] = {
        "instruction": record.turns[0].content,
        "context": "\n\n".join(record.context),
        "response": record.turns[1].content,
        "category": record.category or "",
    }
    if record.split:
        row["split"] = record.split
    return row


WRITERS: dict[str, Callable[[Conversation], dict[str, Any]]] = {
    "openai": to_openai,
    "dolly": to_dolly,
}


def write_jsonl(records: Iterable[Conversation], path: Path, fmt: str = "openai") -> int:
    """Write records as JSON Lines in ``fmt``; the file appears only when complete."""
    if fmt not in WRITERS:
        raise DataError(f"cannot write format {fmt!r}", hint=f"writable: {', '.join(WRITERS)}")
    convert = WRITERS[fmt]
    return write_rows((convert(record) for record in records), path)


def write_rows(rows: Iterable[dict[str, Any]], path: Path) -> int:
    """Write JSON objects as JSON Lines; the file appears only when complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count


def write_sidecar(
    path: Path,
    *,
    licence: str | None,
    authors: Sequence[str] = (),
    source: str | None = None,
    model: dict[str, Any] | None = None,
) -> Path:
    """Declare a written data file's licence in ``FILE.cuvee.yaml``, the sidecar
    ``read_declaration`` reads: the licence travels with the data. An undeclared licence is
    left out (unknown stays unknown); ``model`` records the model that wrote the answers."""
    import yaml

    declared: dict[str, Any] = {}
    if licence:
        declared["licence"] = licence
    if authors:
        declared["authors"] = list(authors)
    if source:
        declared["source"] = source
    if model:
        declared["model"] = model
    sidecar = Path(path).with_name(Path(path).name + SIDECAR_SUFFIX)
    sidecar.write_text(
        yaml.safe_dump(declared, sort_keys=False, allow_unicode=True), encoding="utf-8"
    )
    return sidecar
