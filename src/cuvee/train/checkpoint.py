"""Checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint holds the trainable weights (the adapter for LoRA, all weights for a full
fine-tune), the optimizer state, the run's counters and history (``RunState``, as state.json),
and every random number generator's state. It is written to a temporary directory and renamed,
so a crash while saving leaves the previous checkpoint intact."""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cuvee.errors import CuveeError
from cuvee.store import write_failed

STATE = "state.json"
WEIGHTS = "trainable.safetensors"
OPTIMIZER = "optimizer.pt"
RNG = "rng.pt"

# Keys of state.json that checkpoints of older versions lack; RunState's defaults stand for
# what those versions did (a single-process run; the warm-up computed from the plan).
_ADDED_LATER = frozenset({"parallel", "warmup", "metrics"})


@dataclass(kw_only=True)
class RunState:
    """A run's counters and history: what the loop advances each step, a checkpoint keeps in
    state.json and ``cuvee train --resume`` reads back. The JSON keys are these fields' names,
    in this order; a checkpoint of an older version still resumes (see ``from_json``)."""

    step: int = 0  # optimizer steps done
    total_steps: int  # the planned last step; a time budget re-plans it
    elapsed_s: float = 0.0  # training time over every session, up to the last save
    tokens_seen: int = 0
    supervised_seen: int = 0  # tokens the loss was computed on
    losses: list[float] = field(default_factory=list)  # one per step
    evals: list[dict[str, Any]] = field(default_factory=list)  # {"step", "eval_loss"...}; 0: base
    base_eval_loss: float | None = None  # the held-out loss before the first step
    parallel: str = "single"  # the strategy that saved it: FSDP's optimizer state differs
    warmup: int | None = None  # warm-up steps, kept as planned: a re-plan must not restart it
    # the objective's own metrics of each step ({"step", ...}); none for supervised tuning
    metrics: list[dict[str, float]] = field(default_factory=list)

    def record(
        self, loss: float, tokens: int, supervised: int, measured: dict[str, float] | None = None
    ) -> None:
        """One optimizer step done."""
        self.step += 1
        self.losses.append(loss)
        self.tokens_seen += tokens
        self.supervised_seen += supervised
        if measured:
            self.metrics.append({"step": self.step, **measured})

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if not data["metrics"]:  # a supervised run's state keeps the keys it always had
            del data["metrics"]
        return data

    @classmethod
    def from_json(cls, data: Any, source: Path) -> RunState:
        """The state in ``data`` as read from ``source``; a key it does not know, or one it
        needs and does not find, is an error naming the file."""
        if not isinstance(data, dict):
            raise CuveeError(f"{source}: a run state is a JSON object, not {type(data).__name__}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(k for k in data if k not in names)
        missing = [n for n in names if n not in data and n not in _ADDED_LATER]
        if unknown or missing:
            problems = [f"unknown key(s) {', '.join(unknown)}"] if unknown else []
            problems += [f"missing key(s) {', '.join(missing)}"] if missing else []
            raise CuveeError(
                f"{source}: not a run state this version of cuvee can resume: "
                + "; ".join(problems),
                hint="it was written by another version of cuvee or edited; start a new run, "
                "or resume with the version that wrote it",
            )
        return cls(**data)


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(
    directory: Path,
    step: int,
    weights: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    state: RunState | Mapping[str, Any],
    keep: int,
) -> Path:
    """Write ``directory/step-NNNNNN`` atomically and keep only the newest ``keep``. ``state``
    is the run's state, or the JSON object to write as it."""
    from safetensors.torch import save_file

    final = directory / f"step-{step:06d}"
    tmp = directory / f".tmp-step-{step:06d}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file(weights, str(tmp / WEIGHTS))
        torch.save(optimizer_state, tmp / OPTIMIZER)
        torch.save(rng_state(), tmp / RNG)
        record = state.to_json() if isinstance(state, RunState) else dict(state)
        (tmp / STATE).write_text(json.dumps({**record, "step": step}, indent=1), encoding="utf-8")
    except Exception as exc:
        # Every failure here is a failed write (safetensors and torch raise their own classes
        # for a full disk): drop the partial copy and say what is still there to resume from.
        shutil.rmtree(tmp, ignore_errors=True)
        previous = list_checkpoints(directory)
        kept = (
            f"the previous checkpoint {previous[-1].name} is intact; `cuvee train --resume` "
            "continues from it"
            if previous
            else "no checkpoint of this run was written"
        )
        raise write_failed(exc, tmp, f"the checkpoint of step {step}", kept, always=True) from exc
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.name.startswith("step-") and p.is_dir())


def load_run(
    path: Path, trainable: set[str]
) -> tuple[RunState, dict[str, torch.Tensor], dict[str, Any]]:
    """What ``--resume`` continues from: the checkpoint's run state, its trainable weights
    (checked against the names the model trains) and the optimizer state; the RNG states are
    restored once all of it has been read."""
    state, weights, opt_state, rng = _read(path, trainable)
    run_state = RunState.from_json(state, path / STATE)
    set_rng_state(rng)
    return run_state, weights, opt_state


def load(
    path: Path, trainable: set[str]
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint and restore the RNG states; return its run state as the JSON object
    it was written as, the trainable weights and the optimizer state."""
    state, weights, opt_state, rng = _read(path, trainable)
    set_rng_state(rng)
    return state, weights, opt_state


def _read(path: Path, trainable: set[str]):
    from safetensors.torch import load_file

    try:
        state = json.loads((path / STATE).read_text(encoding="utf-8"))
        weights = load_file(str(path / WEIGHTS))
        opt_state = torch.load(path / OPTIMIZER, weights_only=False)
        rng = torch.load(path / RNG, weights_only=False)
    except (OSError, ValueError) as exc:
        raise CuveeError(f"{path}: checkpoint is unreadable: {exc}") from exc
    missing = sorted(trainable - set(weights))
    if missing:
        raise CuveeError(
            f"{path}: checkpoint does not match the model ({len(missing)} trainable tensors "
            f"missing, e.g. {missing[0]})"
        )
    return state, weights, opt_state, rng
