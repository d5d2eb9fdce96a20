"""What a run learns: the recipe's ``method`` names an Objective, and the loop (loop.py) asks it
for the run's data, its loss, its metrics and anything it needs before the first step.

Supervised fine-tuning lives in sft.py, the preference methods in preference.py; adding one is
an entry in OBJECTIVES."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from cuvee.store import ModelStore
    from cuvee.train.checkpoint import RunState
    from cuvee.train.data import Prepared
    from cuvee.train.display import Display
    from cuvee.train.recipe import Recipe

# The loop's Session (loop.py): the run's recipe, model, loss module and directory. Named here
# without an import, as the loop imports this module.
Session = Any


class Objective(Protocol):
    def label(self, recipe: Recipe) -> str:
        """What the run does, for its opening line."""
        ...

    def prepare(self, store: ModelStore, recipe: Recipe) -> Prepared:
        """The run's data as rows (with ``real_tokens`` and ``supervised``)."""
        ...

    def loss_module(
        self, model: torch.nn.Module, compute_dtype: torch.dtype, recipe: Recipe
    ) -> torch.nn.Module:
        """The module the loop calls on a batch (the model at its ``model`` attribute, for the
        parallel strategies); what it returns goes through ``split``."""
        ...

    def batch(self, rows: list[Any], device: torch.device) -> dict[str, torch.Tensor]: ...

    def weight(self, row: Any) -> int:
        """What a row adds to the count a step's summed loss is divided by."""
        ...

    def split(self, output: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The loss module's output as (summed loss, summed metrics or None)."""
        ...

    def zero_stats(self, device: torch.device) -> torch.Tensor:
        """The summed metrics of a process that had no rows this step."""
        ...

    def metrics(self, stats: list[float]) -> dict[str, float]:
        """Named metrics from a step's summed ones."""
        ...

    def before_training(self, run: Session, display: Display) -> None:
        """Work on the parent model before the first step (and before a resumed run's weights
        are loaded)."""
        ...

    def held_out(
        self,
        loss_fn: torch.nn.Module,
        rows: list[Any],
        batch_size: int,
        device: torch.device,
        autocast: Callable[[], AbstractContextManager],
    ) -> dict[str, float]:
        """``eval_loss`` and the objective's own metrics on the held-out rows."""
        ...

    def summary(self, run: Session, state: RunState) -> dict[str, Any]:
        """What the objective adds to the run's summary (and so to the lineage and card)."""
        ...


def objective_for(recipe: Recipe) -> Objective:
    """A new Objective for a run of ``recipe`` (one per run: it may keep what it computed)."""
    from cuvee.train.preference import Preference
    from cuvee.train.sft import Supervised

    objectives: dict[str, Callable[[Recipe], Objective]] = {
        "sft": Supervised,
        "dpo": Preference,
        "kto": Preference,
        "orpo": Preference,
    }
    return objectives[recipe.method](recipe)
