"""What a person watching a run sees: one live line with step, loss (and a preference run's
reward accuracy and margin), tokens/s, elapsed, ETA and cost on stderr, and messages above it.
Scripts and tests use the silent display."""

from __future__ import annotations

from typing import Any, Protocol


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Display(Protocol):
    def start(self, total_steps: int, done: int) -> None: ...
    def update(self, step: int, total_steps: int, metrics: dict[str, Any]) -> None: ...
    def message(self, text: str) -> None: ...
    def close(self) -> None: ...


class SilentDisplay:
    def __init__(self) -> None:
        self.messages: list[str] = []

    def start(self, total_steps: int, done: int) -> None:
        pass

    def update(self, step: int, total_steps: int, metrics: dict[str, Any]) -> None:
        pass

    def message(self, text: str) -> None:
        self.messages.append(text)

    def close(self) -> None:
        pass


class RichDisplay:
    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.progress = None
        self.task = None

    def start(self, total_steps: int, done: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=total_steps, completed=done, info="")

    def update(self, step: int, total_steps: int, metrics: dict[str, Any]) -> None:
        if self.progress is None:
            return
        info = (
            f"loss {metrics['loss']:.3f} | {metrics['tokens_per_s']:.0f} tok/s | "
            f"{_clock(metrics['elapsed_s'])} < ETA {_clock(metrics['eta_s'])} | "
            f"${metrics['cost_usd']:.3f}"
        )
        if metrics.get("accuracy") is not None:  # preference tuning
            info += f" | acc {metrics['accuracy']:.2f}"
        if metrics.get("margin") is not None:
            info += f" | margin {metrics['margin']:.3f}"
        if metrics.get("eval_loss") is not None:
            info += f" | eval {metrics['eval_loss']:.3f}"
        if metrics.get("eval_accuracy") is not None:
            info += f" acc {metrics['eval_accuracy']:.2f}"
        self.progress.update(self.task, completed=step, total=total_steps, info=info)

    def message(self, text: str) -> None:
        self.console.print(text, highlight=False)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
