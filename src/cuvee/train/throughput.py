"""What a run costs: the hardware it runs on, tokens per second, time left and money spent."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cuvee.config import Settings


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def bf16_supported(device_type: str) -> bool:
    """bf16 autocast pays off on GPUs that have bf16 and on CPUs with native bf16 (AVX512-BF16
    or AMX); elsewhere it is emulated and slower than fp32."""
    import torch

    if device_type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = next((ln for ln in fh if ln.startswith("flags")), "")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def hardware(device_type: str, world_size: int = 1) -> dict[str, Any]:
    """What the run ran on, for the lineage manifest and the cost estimate."""
    import torch

    info: dict[str, Any] = {
        "device": device_type,
        "cpu": cpu_name(),
        "cpu_cores": cpu_count(),
        "processes": world_size,
    }
    if device_type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = world_size
    return info


def peak_memory_mb(device_type: str) -> float:
    """Peak memory of this process so far: GPU memory allocated by torch on a GPU, resident
    set size on the CPU."""
    import torch

    if device_type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def price_per_hour(device_type: str, world_size: int, settings: Settings) -> float:
    if device_type == "cuda":
        return settings.price_gpu_hour * world_size
    return settings.price_cpu_hour


@dataclass
class Meter:
    """Running totals of a run; ``elapsed_before`` carries the time of earlier sessions over a
    resume, so ETA and cost count the whole run."""

    price_per_hour: float
    elapsed_before: float = 0.0
    tokens: int = 0
    supervised: int = 0
    started: float = field(default_factory=time.perf_counter)
    # Throughput over the steps of this session only, so it is not diluted by start-up.
    _window: list[tuple[float, int]] = field(default_factory=list)

    def add(self, tokens: int, supervised: int) -> None:
        self.tokens += tokens
        self.supervised += supervised
        self._window.append((time.perf_counter(), tokens))
        del self._window[:-20]

    @property
    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def tokens_per_s(self) -> float:
        if len(self._window) < 2:
            return 0.0
        span = self._window[-1][0] - self._window[0][0]
        return sum(n for _, n in self._window[1:]) / span if span > 0 else 0.0

    def cost(self, seconds: float | None = None) -> float:
        return self.price_per_hour * (self.elapsed if seconds is None else seconds) / 3600.0

    @staticmethod
    def eta(done_steps: int, total_steps: int, seconds_per_step: float) -> float:
        return max(0, total_steps - done_steps) * seconds_per_step
