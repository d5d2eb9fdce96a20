"""What an export format is: a name, the quantizations it offers, and the function that writes
it (to a temporary path the caller renames into place)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cuvee.export.source import ExportSource
    from cuvee.progress import Reporter


@dataclass(frozen=True)
class Format:
    name: str
    description: str
    quants: tuple[str, ...]  # the first is the default; () when the format has none
    suffix: str  # the file's suffix, or "" for a directory
    # (source, temporary output path, quantization, adapter only, reporter) -> extra record fields
    write: Callable[[ExportSource, Path, str | None, bool, Reporter], dict | None]
    adapter_only: bool = False  # whether --adapter-only applies
