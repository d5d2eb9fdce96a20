"""Preference tuning (``method: dpo | kto | orpo``): the Objective the loop trains with.

The data are preference units (pairs.py), the log-probabilities of their answers are computed
with the head at answer tokens only and one encoding of each prompt (answers.py), and the loss is
one of preference_loss.LOSSES. The reference is the parent model itself: its log-probabilities
of every answer are computed once, before the first step, while the model still is its parent
(LoRA: with the new adapter disabled; a full fine-tune: the weights not yet trained), and cached
in the run's directory under a hash of the parent and the data's tokens, so a resumed run reads
them instead of computing them again. No second copy of the model is ever held."""

from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from cuvee.train.answers import AnswerLogProbs
from cuvee.train.pairs import UnitRow, answer_batch, prepare_preferences
from cuvee.train.preference_loss import (
    LOSSES,
    Answers,
    Knobs,
    finished_stats,
    loss_name,
    packed_stats,
)
from cuvee.train.recipe import Recipe

REFERENCE = "reference.pt"


class PreferenceLoss(AnswerLogProbs):
    """The answers' log-probabilities, then the recipe's preference loss: the summed loss of
    the micro-batch's examples and their metrics as (sum, count) pairs."""

    def __init__(self, model: torch.nn.Module, compute_dtype: torch.dtype, recipe: Recipe):
        super().__init__(model, compute_dtype)
        self.spec = LOSSES[loss_name(recipe)]
        self.knobs = Knobs.of(recipe)

    def forward(
        self,
        input_ids,
        position_ids,
        unit,
        branch,
        source,
        targets,
        slot,
        labels,
        reference,
        logprobs_only: bool = False,
    ):
        """The summed loss and metrics; with ``logprobs_only``, the answers' summed
        log-probabilities and token counts instead (the reference pass: through ``forward``, so
        FSDP gathers the weights it needs)."""
        sums, counts = self.answer_logprobs(
            input_ids, position_ids, unit, branch, source, targets, slot, 2 * labels.shape[0]
        )
        if logprobs_only:
            return sums, counts
        answers = Answers(sums.view(-1, 2), reference.view(-1, 2), counts.view(-1, 2), labels)
        losses, stats = self.spec.fn(answers, self.knobs)
        return losses.sum(), packed_stats(self.spec, stats)


def _parent(model: torch.nn.Module):
    """The model as its parent: a peft model with its adapters disabled, else itself."""
    disable = getattr(model, "disable_adapter", None)
    return disable() if disable is not None else nullcontext()


def reference_logprobs(
    loss_fn: PreferenceLoss, rows: list[UnitRow], batch_size: int, device, autocast
) -> torch.Tensor:
    """The parent's summed log-probability of each answer, (units, 2) in row order.

    Through the same kernels as the training steps (compiled ones included): the policy's first
    step then sees exactly its reference (DPO's loss ln 2). Eager kernels here and compiled ones
    in the step differed by about 0.3 nats per answer on gemma3-270m in bf16, a step-0 loss of
    0.72 instead of 0.69."""
    out: list[torch.Tensor] = []
    loss_fn.eval()
    with torch.no_grad(), autocast(), _parent(loss_fn.model):
        for i in range(0, len(rows), batch_size):
            sums, _ = loss_fn(**answer_batch(rows[i : i + batch_size], device), logprobs_only=True)
            out.append(sums.view(-1, 2).cpu())
    loss_fn.train()
    return torch.cat(out) if out else torch.zeros(0, 2)


def with_reference(rows: list[UnitRow], values: torch.Tensor) -> list[UnitRow]:
    flat = iter(values.tolist())
    return [UnitRow(tuple(replace(u, reference=tuple(next(flat))) for u in r.units)) for r in rows]


def reference_key(run) -> str:
    """What the cached log-probabilities depend on: the parent's weights, the precision they
    were computed in and every answer's tokens."""
    base = run.prepared.base.manifest
    weights = base.file("weights")
    digest = hashlib.sha256()
    head = {
        "parent": base.name,
        "weights": weights.sha256 if weights else None,
        "adapter": run.recipe.adapter,
        "precision": run.precision,
    }
    digest.update(json.dumps(head, sort_keys=True).encode())
    for rows in (run.prepared.train_rows, run.prepared.eval_rows):
        digest.update(b"|")
        for row in rows:
            for u in row.units:
                digest.update(json.dumps([u.prompt, u.first, u.second]).encode())
    return digest.hexdigest()


def _read_cache(path: Path, key: str) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        cached = torch.load(path, weights_only=True)
    except (OSError, RuntimeError, ValueError):
        return None
    return cached if isinstance(cached, dict) and cached.get("key") == key else None


def _write_cache(path: Path, values: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(values, tmp)
    os.replace(tmp, path)


class Preference:
    """The Objective (objectives.py) of ``method: dpo``, ``kto`` and ``orpo``: one per run."""

    def __init__(self, recipe: Recipe) -> None:
        self.spec = LOSSES[loss_name(recipe)]
        self.reference: dict[str, Any] | None = None  # how the reference was had, once it was

    def label(self, recipe: Recipe) -> str:
        loss = loss_name(recipe)
        shown = recipe.method if loss == recipe.method else f"{recipe.method} ({loss})"
        return f"{shown} on {recipe.adapter}"

    def prepare(self, store, recipe):
        return prepare_preferences(store, recipe)

    def loss_module(self, model, compute_dtype, recipe) -> PreferenceLoss:
        return PreferenceLoss(model, compute_dtype, recipe)

    def batch(self, rows: list[UnitRow], device) -> dict[str, torch.Tensor]:
        return answer_batch(rows, device)

    def weight(self, row: UnitRow) -> int:
        return row.examples

    def split(self, output):
        return output

    def zero_stats(self, device) -> torch.Tensor:
        # every process runs the same objective: the width is its spec's
        return torch.zeros(2 * len(self.spec.stats), device=device)

    def metrics(self, stats: list[float]) -> dict[str, float]:
        return finished_stats(self.spec, stats)

    def before_training(self, run, display) -> None:
        if not self.spec.needs_reference:
            return
        path = run.run_dir / REFERENCE
        key = reference_key(run)
        cached = _read_cache(path, key)
        answers = 2 * sum(r.examples for r in run.prepared.train_rows + run.prepared.eval_rows)
        if cached is not None:
            display.message(f"reference log-probabilities of {answers} answers read from {path}")
            how, took = "read from the run's cache", 0.0
        else:
            display.message(
                f"computing the parent's log-probabilities of {answers} answers, once "
                "(before the steps, within the time budget)"
            )
            started = time.perf_counter()
            args = (run.recipe.batch_size, run.device, run.autocast)
            cached = {
                "key": key,
                "train": reference_logprobs(run.loss_fn, run.prepared.train_rows, *args),
                "eval": reference_logprobs(run.loss_fn, run.prepared.eval_rows, *args),
            }
            if run.main:
                _write_cache(path, cached)
            took = time.perf_counter() - started
            display.message(
                f"reference log-probabilities of {answers} answers computed with the parent "
                f"{run.recipe.base} in {took:.1f} s; cached in {path}"
            )
            how = f"computed in {took:.1f} s"
        run.prepared.train_rows = with_reference(run.prepared.train_rows, cached["train"])
        run.prepared.eval_rows = with_reference(run.prepared.eval_rows, cached["eval"])
        # counted in the run's time budget, wall time and cost (loop.py measures it)
        self.reference = {
            "parent": run.recipe.base,
            "answers": answers,
            "how": how,
            "seconds": round(took, 1),
        }

    def held_out(self, loss_fn, rows, batch_size, device, autocast) -> dict[str, float]:
        if not rows:
            return {"eval_loss": None}
        loss_fn.eval()
        total, examples, stats = 0.0, 0, None
        # the kernels the reference pass ran (see reference_logprobs), so that the held-out
        # metrics before training are exactly those of the policy equal to its parent
        with torch.no_grad(), autocast():
            for i in range(0, len(rows), batch_size):
                chunk = rows[i : i + batch_size]
                loss, measured = loss_fn(**answer_batch(chunk, device))
                total += float(loss)
                examples += sum(r.examples for r in chunk)
                stats = measured if stats is None else stats + measured
        loss_fn.train()
        out = {"eval_loss": total / max(examples, 1)}
        measured = finished_stats(self.spec, stats.tolist())
        out.update({f"eval_{k}": v for k, v in measured.items()})
        return out

    def summary(self, run, state) -> dict[str, Any]:
        recipe = run.recipe
        names = self.spec.stats
        recent = state.metrics[-10:]
        train = {
            n: sum(m[n] for m in recent if n in m) / max(1, sum(1 for m in recent if n in m))
            for n in names
            if any(n in m for m in recent)
        }
        if state.losses:
            train["loss"] = sum(state.losses[-10:]) / len(state.losses[-10:])

        def unprefixed(entry: dict[str, Any] | None) -> dict[str, Any] | None:
            if entry is None:
                return None
            return {k.removeprefix("eval_"): v for k, v in entry.items() if k != "step"}

        evals = [e for e in state.evals if e["step"] > 0]
        before = [e for e in state.evals if e["step"] == 0]
        return {
            "method": recipe.method,
            "preference": {
                "loss": loss_name(recipe),
                "beta": recipe.preference_beta,
                "examples": run.prepared.encode_stats,
                "train": train,
                "eval": unprefixed(evals[-1] if evals else None),
                "eval_before": unprefixed(before[0] if before else None),
                "reference": self.reference,
            },
        }
