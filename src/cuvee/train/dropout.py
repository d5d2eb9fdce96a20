"""A cheaper dropout for LoRA adapter inputs on CPU.

torch's dropout draws one Bernoulli sample per element; on a 2-core CPU that is 10% of a LoRA
step (every adapted layer draws its own mask). This one draws 32 random bits per two elements
and compares 15-bit halves with a threshold: the same distribution with the drop probability
rounded to a multiple of 1/32768, from the same torch generator (so seeded runs and resumes stay
exact). Given compiled kernels (`kernels.Kernels`), the mask comes from their fused hash instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from cuvee.train.kernels import Kernels

_SCALE = 1 << 15


class FastDropout(torch.nn.Module):
    def __init__(self, p: float, kernels: Kernels | None = None) -> None:
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError("dropout probability must be in [0, 1)")
        self.threshold = round(p * _SCALE)
        self.p = self.threshold / _SCALE
        self.kernels = kernels

    @property
    def active(self) -> bool:
        return self.training and self.threshold > 0

    @property
    def keep_scale(self) -> float:
        """What kept elements are multiplied by (1 when inactive)."""
        return 1.0 / (1.0 - self.p) if self.active else 1.0

    def zero_dropped(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with the dropped elements zeroed but the kept ones not yet rescaled: a caller
        that feeds a linear map can apply ``keep_scale`` to its much smaller output instead."""
        if not self.active:
            return x
        if self.kernels is not None:
            return self.kernels.zero_dropped(x, self.threshold)
        n = x.numel()
        bits = torch.empty((n + 1) // 2, dtype=torch.int32, device=x.device).random_()
        # random_ fills int32 with [0, 2^31): the high half of each draw has 15 random bits.
        halves = bits.view(torch.int16)[:n].view(x.shape)
        return x.masked_fill((halves & 0x7FFF) < self.threshold, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return x
        return self.zero_dropped(x) * self.keep_scale

    def extra_repr(self) -> str:
        return f"p={self.p}"


def replace_dropout(model: torch.nn.Module, kernels: Kernels | None = None) -> int:
    """Swap the nn.Dropout of every LoRA adapter for FastDropout; returns how many."""
    count = 0
    for module in model.modules():
        adapters = getattr(module, "lora_dropout", None)
        if not isinstance(adapters, torch.nn.ModuleDict):
            continue
        for key, drop in adapters.items():
            if isinstance(drop, torch.nn.Dropout):
                adapters[key] = FastDropout(drop.p, kernels)
                count += 1
    return count
