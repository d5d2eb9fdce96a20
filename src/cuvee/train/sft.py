"""Supervised fine-tuning: the answers of the data are learned token by token.

The loss is the cross-entropy of the supervised tokens, computed through the output head at
those positions only (see loss.py), summed per micro-batch; the loop (loop.py) divides it by the
step's supervised tokens."""

from __future__ import annotations

from typing import Any

import torch

from cuvee.train.data import prepare
from cuvee.train.encode import IGNORE
from cuvee.train.loss import Workspace, linear_cross_entropy
from cuvee.train.packing import Row
from cuvee.train.surgery import causal_lm, head_weights

# `train` and friends were defined here before the loop served every objective; callers and
# scripts still import them from this module.
__all__ = ["SFTLoss", "Supervised", "evaluate"]


class Supervised:
    """The Objective (objectives.py) of ``method: sft``."""

    def __init__(self, recipe=None) -> None:
        pass

    def label(self, recipe) -> str:
        return recipe.adapter

    def prepare(self, store, recipe):
        return prepare(store, recipe)

    def loss_module(self, model, compute_dtype, recipe) -> SFTLoss:
        return SFTLoss(model, compute_dtype)

    def batch(self, rows: list[Row], device) -> dict[str, torch.Tensor]:
        return _tensors(rows, device)

    def weight(self, row: Row) -> int:
        return row.supervised

    def split(self, output: torch.Tensor):
        return output, None

    def zero_stats(self, device) -> torch.Tensor:
        return torch.zeros(0, device=device)

    def metrics(self, stats: list[float]) -> dict[str, float]:
        return {}

    def before_training(self, run, display) -> None:
        pass

    def held_out(self, loss_fn, rows, batch_size, device, autocast) -> dict[str, float]:
        return {"eval_loss": evaluate(loss_fn, rows, batch_size, device, autocast)}

    def summary(self, run, state) -> dict[str, Any]:
        return {}


class SFTLoss(torch.nn.Module):
    """Decoder forward, then cross-entropy through the output head at supervised positions only.
    The head runs inside this module's forward so wrappers that gather sharded weights for a
    forward (DDP, FSDP) see it."""

    def __init__(self, model: torch.nn.Module, compute_dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model
        self.compute_dtype = compute_dtype
        lm = causal_lm(model)
        self.softcap = getattr(lm.config, "final_logit_softcapping", None)
        self.workspace = Workspace()

    def forward(self, input_ids, position_ids, labels) -> torch.Tensor:
        lm = causal_lm(self.model)
        out = lm.get_decoder()(input_ids=input_ids, position_ids=position_ids, use_cache=False)
        mask = labels != IGNORE
        hidden = out.last_hidden_state[mask]
        weight, row_index, row_values = head_weights(lm.get_output_embeddings())
        return linear_cross_entropy(
            hidden,
            weight,
            labels[mask],
            softcap=self.softcap,
            compute_dtype=self.compute_dtype,
            row_index=row_index,
            row_values=row_values,
            workspace=self.workspace,
        )


def _tensors(rows: list[Row], device: torch.device) -> dict[str, torch.Tensor]:
    width = max(r.real_tokens for r in rows)
    return {
        "input_ids": torch.tensor([r.input_ids[:width] for r in rows], device=device),
        "position_ids": torch.tensor([r.position_ids[:width] for r in rows], device=device),
        "labels": torch.tensor([r.labels[:width] for r in rows], device=device),
    }


def evaluate(loss_fn: SFTLoss, rows: list[Row], batch_size: int, device, autocast) -> float | None:
    if not rows:
        return None
    loss_fn.eval()
    total, count = 0.0, 0
    # Compiled kernels run their originals here: the held-out pass is a small share of the
    # time, and its no-grad shapes would otherwise each take one of the compiled variants
    # torch keeps per function (8), leaving the training steps' shapes uncompiled.
    with torch.no_grad(), autocast(), torch.compiler.set_stance("force_eager"):
        for i in range(0, len(rows), batch_size):
            chunk = rows[i : i + batch_size]
            total += float(loss_fn(**_tensors(chunk, device)))
            count += sum(r.supervised for r in chunk)
    loss_fn.train()
    return total / max(count, 1)
