"""Checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint holds the trainable weights (the adapter for LoRA, all weights for a full
fine-tune), the optimizer state, the run's counters and history, and every random number
generator's state. It is written to a temporary directory and renamed, so a crash while saving
leaves the previous checkpoint intact."""

from __future__ import annotations

import json
import os
import random
import shutil
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
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Write ``directory/step-NNNNNN`` atomically and keep only the newest ``keep``."""
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
        (tmp / STATE).write_text(json.dumps({**state, "step": step}, indent=1), encoding="utf-8")
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


def load(
    path: Path, trainable: set[str]
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint and restore the RNG states; return its run state, the trainable
    weights (checked against the names the model trains) and the optimizer state."""
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
    set_rng_state(rng)
    return state, weights, opt_state
