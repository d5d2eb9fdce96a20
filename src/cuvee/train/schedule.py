"""The schedule of a run: which rows each step trains on, the learning rate at each step, and
how many steps fit in a time budget.

The data order is a pure function of seed, epoch and step (``Schedule``), so a resumed run
sees exactly the batches an uninterrupted one would. The learning rate warms up linearly and
decays on a cosine to zero at the planned last step. A time-budgeted run does not know its
last step in advance: it re-plans it from its pace as it goes (``replan_due``, ``plan_steps``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

# Session step counts after which a time-budgeted run re-plans its number of steps, and then
# every _REPLAN_EVERY steps from the pace of the last _REPLAN_EVERY: a slow spell at the start
# (another job on the machine) must not fix the plan for the whole budget; a run planned at
# 20 s/step while CI ran beside it stopped after 14 of its 30 minutes once the pace tripled.
_REPLAN_AT = (2, 12)
_REPLAN_EVERY = 20


def replan_due(steps_this_session: int) -> bool:
    return steps_this_session in _REPLAN_AT or (
        steps_this_session > _REPLAN_AT[-1] and steps_this_session % _REPLAN_EVERY == 0
    )


def warmup_for(ratio: float, total: int, step: int, current: int | None = None) -> int:
    """Warm-up steps for a plan of ``total`` steps. A re-plan after the warm-up has ended keeps
    it as it was: a plan that grew must not send the learning rate back into the ramp."""
    if current is not None and step >= current:
        return current
    return max(1, math.ceil(ratio * total))


def plan_steps(done: int, seconds_left: float, per_step: float, limit: int) -> int:
    """Optimizer steps for the whole run: those done plus what fits in the time left at this
    pace, at most ``limit`` (the epochs' or max_steps) and never fewer than already done."""
    fit = done + max(0, int(seconds_left / max(per_step, 1e-9)))
    return max(done, min(limit, fit))


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to zero at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class Schedule:
    """Which rows each micro-batch of each step holds: a pure function of the seed."""

    rows: int
    batch_size: int
    grad_accum: int
    epochs: float
    seed: int
    world: int = 1
    _perms: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def micro_per_epoch(self) -> int:
        return math.ceil(self.rows / self.batch_size)

    @property
    def steps_for_epochs(self) -> int:
        micro = math.ceil(self.epochs * self.micro_per_epoch)
        return max(1, math.ceil(micro / (self.grad_accum * self.world)))

    def micro_batch(self, k: int) -> list[int]:
        epoch, j = divmod(k, self.micro_per_epoch)
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng(self.seed + epoch).permutation(self.rows)}
        return self._perms[epoch][j * self.batch_size : (j + 1) * self.batch_size].tolist()

    def step(self, step: int) -> list[list[list[int]]]:
        """For each micro-batch slot, the rows of every process: [slot][rank] -> rows."""
        per = self.grad_accum * self.world
        base = step * per
        return [
            [self.micro_batch(base + a * self.world + r) for r in range(self.world)]
            for a in range(self.grad_accum)
        ]


def _mean(values: list[float]) -> float:
    recent = values[-10:]
    return sum(recent) / len(recent) if recent else 0.0


class Plan(NamedTuple):
    """A re-plan's outcome: the run's new last step, its warm-up, and the pace it assumed."""

    total_steps: int
    warmup: int
    per_step: float


class TimeBudget:
    """This session's step times and, for a run with a time budget, its step count fitted to
    them. Without a budget (``seconds`` None) it only keeps the pace, for the ETA.

    Re-plans come once a step's cost is known, again once it has settled, then from the recent
    pace; time is kept for the final evaluation and saving. A budgeted run's step count depends
    on the machine's speed, by design."""

    def __init__(self, seconds: float | None, limit: int, warmup_ratio: float) -> None:
        self.seconds = seconds
        self.limit = limit  # the epochs' steps, or max_steps: no plan goes beyond it
        self.warmup_ratio = warmup_ratio
        self.step_times: list[float] = []
        self.eval_seconds = 0.0  # the latest held-out pass; the final one will take as long

    def step_took(self, seconds: float) -> None:
        self.step_times.append(seconds)

    @property
    def last_step(self) -> float:
        return self.step_times[-1]

    @property
    def per_step(self) -> float:
        """Seconds per step over the last ten of this session."""
        return _mean(self.step_times)

    def replan(self, step: int, total: int, warmup: int, elapsed: float) -> Plan | None:
        """The new plan when one is due and differs from ``total`` steps, else None."""
        if self.seconds is None or not replan_due(len(self.step_times)):
            return None
        times = self.step_times
        recent = times[1:] if len(times) <= _REPLAN_AT[-1] else times
        per_step = _mean(recent[-_REPLAN_EVERY:] or times)
        left = self.seconds - elapsed - 2 * self.eval_seconds - 15
        planned = plan_steps(step, left, per_step, self.limit)
        if planned == total:
            return None
        return Plan(planned, warmup_for(self.warmup_ratio, planned, step, warmup), per_step)

    def spent(self, elapsed: float) -> bool:
        """Whether another step would end past the budget."""
        return self.seconds is not None and elapsed + self.per_step > self.seconds
