"""A training run's directory: where it is made, how it is found again, and what it holds.

<runs_dir>/<name>-<UTC time>[-n]/
    recipe.yaml    the resolved recipe; ``cuvee train --resume`` rebuilds the run from it
    checkpoints/   step-NNNNNN/ directories (checkpoint.py) while the run is unfinished
    log.jsonl      the metrics of every step (tracking.py; tensorboard/ beside it if asked)
    summary.json   written when the model is registered: the run is then complete and its
                   checkpoints are removed"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from cuvee.config import Settings
from cuvee.errors import ConfigError
from cuvee.train.recipe import Recipe

RECIPE = "recipe.yaml"
CHECKPOINTS = "checkpoints"
SUMMARY = "summary.json"


def new_run_dir(settings: Settings, name: str) -> Path:
    """A path for a new run of ``name``: the name and the UTC time, numbered if taken."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    run_dir = settings.runs_dir / f"{name}-{stamp}"
    n = 1
    while run_dir.exists():
        n += 1
        run_dir = settings.runs_dir / f"{name}-{stamp}-{n}"
    return run_dir


def find_run(settings: Settings, spec: str) -> Path:
    """A run directory by path, directory name, or model name (its newest run)."""
    path = Path(spec)
    if (path / RECIPE).is_file():
        return path
    candidates = []
    if settings.runs_dir.is_dir():
        candidates = sorted(
            p
            for p in settings.runs_dir.iterdir()
            if (p / RECIPE).is_file() and (p.name == spec or p.name.startswith(spec + "-"))
        )
    if not candidates:
        raise ConfigError(
            f"no training run {spec!r}",
            hint=f"runs live in {settings.runs_dir}; pass a run directory or the model name",
        )
    return candidates[-1]


def create(run_dir: Path, recipe: Recipe) -> None:
    """Make the directory and write the resolved recipe into it, unless a resumed run's is
    already there."""
    import yaml

    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / RECIPE
    if not path.exists():
        path.write_text(yaml.safe_dump(recipe.resolved(), sort_keys=False), encoding="utf-8")


def checkpoints(run_dir: Path) -> Path:
    return run_dir / CHECKPOINTS


def completed(run_dir: Path) -> bool:
    """Whether the run finished and registered its model (nothing is left to resume)."""
    return (run_dir / SUMMARY).is_file()


def complete(run_dir: Path, summary: dict[str, Any]) -> None:
    """Write the summary of a run whose model is registered, and drop its checkpoints."""
    (run_dir / SUMMARY).write_text(json.dumps(summary, indent=1), encoding="utf-8")
    shutil.rmtree(checkpoints(run_dir), ignore_errors=True)
