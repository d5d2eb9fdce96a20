"""How commands print: one JSON document on stdout for scripts, tables for people."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from cuvee.progress import Reporter, RichReporter, SilentReporter


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def read_valid(path: Path, fmt: str | None) -> Any:
    """The records of data file ``path`` (``cuvee.data.formats.read_file``'s result); when any
    is invalid, its first ten problems go to stderr and nothing is written: a DataError."""
    from cuvee.data.formats import read_file
    from cuvee.errors import DataError

    result = read_file(path, fmt)
    if result.problems:
        for problem in result.problems[:10]:
            click.echo(f"error: {problem}", err=True)
        raise DataError(
            f"{path}: {len(result.problems)} invalid record(s); nothing written",
            hint=f"run `cuvee data check {path}` for the full list",
        )
    return result


def reporter_for(json_output: bool, quiet: bool = False) -> Reporter:
    """Progress bars for people; none when a script reads JSON or asked for quiet."""
    return SilentReporter() if (json_output or quiet) else RichReporter()


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def human_count(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.0f}{unit}" if n / scale >= 10 else f"{n / scale:.1f}{unit}"
    return str(n)
