"""Where metrics go: always a JSONL log in the run directory; TensorBoard or MLflow when asked
for and installed. One registry, so adding a tracker is one entry."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from cuvee.errors import ConfigError


class Tracker(Protocol):
    def log(self, step: int, metrics: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class JsonlTracker:
    def __init__(self, run_dir: Path, recipe: dict[str, Any]) -> None:
        self.path = run_dir / "log.jsonl"
        self._fh = self.path.open("a", encoding="utf-8")

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        self._fh.write(json.dumps({"step": step, **metrics}) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


class TensorBoardTracker:
    def __init__(self, run_dir: Path, recipe: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.writer.add_text("recipe", "```\n" + json.dumps(recipe, indent=1) + "\n```")

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        for key, value in metrics.items():
            if isinstance(value, int | float):
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class MlflowTracker:
    def __init__(self, run_dir: Path, recipe: dict[str, Any]) -> None:
        import mlflow

        self.mlflow = mlflow
        mlflow.start_run(run_name=run_dir.name)
        mlflow.log_params({k: str(v)[:250] for k, v in recipe.items()})

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        values = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        self.mlflow.log_metrics(values, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


# name -> (module that must be importable, constructor)
TRACKERS: dict[str, tuple[str, Callable[[Path, dict[str, Any]], Tracker]]] = {
    "tensorboard": ("tensorboard", TensorBoardTracker),
    "mlflow": ("mlflow", MlflowTracker),
}


def check_trackers(names: list[str]) -> None:
    """Fail before training starts if a requested tracker is not installed."""
    import importlib.util

    for name in names:
        module, _ = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"report_to {name!r} is asked for but {module} is not installed",
                hint=f"pip install {module}, or drop it from report_to",
            )


def open_trackers(run_dir: Path, names: list[str], recipe: dict[str, Any]) -> list[Tracker]:
    check_trackers(names)
    return [JsonlTracker(run_dir, recipe)] + [TRACKERS[n][1](run_dir, recipe) for n in names]
