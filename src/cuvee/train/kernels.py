"""Fused CPU kernels for the elementwise parts of a LoRA step, made by torch.compile.

On a 2-core CPU the matrix products of a gemma3-270m step run near the machine's peak; much of
what is left is elementwise work done one memory pass per operation. An RMSNorm is seven passes
forward and more backward; a dropout mask is torch's sequential random generator and three more
passes. Compiled, each becomes one or two vectorised loops:

- the model's RMSNorm modules run their own forward, compiled (the same arithmetic, in fp32
  inside the loop as the eager code does it);
- attention is the model's own eager attention function (its transformers module's
  `eager_attention_forward`: scores, mask, fp32 softmax, weighted sum), compiled; registered
  with transformers' AttentionInterface, which is a process-wide registry, under one name;
- LoRA dropout draws its mask from a counter-based hash of the element index and a seed taken
  from torch's generator (so seeded runs and resumes stay exact), computed in the same loop that
  zeroes the dropped elements. The same hash runs eagerly when not compiled, so both give the
  same masks, but the eager version is slow: without compilation dropout keeps torch's
  generator (`dropout.FastDropout`).

Compilation needs a C++ compiler. Whether to use it is the `train_compile` setting: auto (on a
CPU, when a probe compiles), on (an error if it cannot), off. A kernel that still fails to
compile later runs uncompiled from then on, with a warning (`Guarded`)."""

from __future__ import annotations

import importlib
import types
import warnings
from collections.abc import Callable

import torch

from cuvee.errors import ConfigError

MODES = ("auto", "on", "off")
ATTENTION = "cuvee_compiled_eager"


def _mix(v: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xor-shift-multiply rounds) on int32 lanes; multiplication wraps
    and the right shifts are made logical by masking."""
    v = (v ^ ((v >> 16) & 0xFFFF)) * 0x7FEB352D
    v = (v ^ ((v >> 15) & 0x1FFFF)) * 0x2C1B3C6D
    return v ^ ((v >> 16) & 0xFFFF)


def hashed_zero_dropped(x: torch.Tensor, seed: torch.Tensor, threshold: int) -> torch.Tensor:
    """2-D ``x`` with each element zeroed where 15 bits of hash(index, seed) fall below
    ``threshold`` (probability threshold / 32768)."""
    rows, cols = x.shape
    index = torch.arange(rows, device=x.device, dtype=torch.int32)[:, None] * cols
    index = index + torch.arange(cols, device=x.device, dtype=torch.int32)
    bits = _mix(_mix(index) ^ seed)
    return torch.where((bits & 0x7FFF) < threshold, torch.zeros((), dtype=x.dtype), x)


class Guarded:
    """A compiled function beside its eager original. The first time compiling it fails, the
    original takes over for good, with one warning: a compiler problem the start-up probe did
    not catch slows the run instead of stopping it. Errors that are not the compiler's are
    raised again by the original."""

    def __init__(self, eager: Callable) -> None:
        self.eager = eager
        self.compiled: Callable | None = torch.compile(eager)

    def __call__(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except torch._dynamo.exc.TorchDynamoException as exc:
                self.compiled = None
                name = getattr(self.eager, "__qualname__", repr(self.eager))
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                warnings.warn(
                    f"compiling {name} failed ({first}); it runs uncompiled from now on "
                    "(CUVEE_TRAIN_COMPILE=off skips compiling altogether)",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return self.eager(*args, **kwargs)


class Kernels:
    """The compiled functions of one training process (`choose` gives None instead when
    compilation is off)."""

    def __init__(self) -> None:
        # torch keeps 8 compiled variants of a function, then runs the rest eager. The norms
        # alone take about 5 in training (hidden states, and q/k heads of width 1 and more,
        # static then dynamic); a preference run's reference pass runs the same kernels without
        # gradients (preference.py), another 4 or so, and then some training steps ran eager:
        # slower, and not the numbers the reference saw.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
        self._dropout = Guarded(hashed_zero_dropped)
        self._forwards: dict[type, Callable] = {}
        self._attention: dict[str, Callable] = {}

    def zero_dropped(self, x: torch.Tensor, threshold: int) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        # Rows vary with the batch, columns are a layer's width: one compiled loop per width.
        torch._dynamo.mark_dynamic(flat, 0)
        seed = torch.randint(0, 2**31 - 1, (), dtype=torch.int32, device=x.device)
        return self._dropout(flat, seed, threshold).view(x.shape)

    def compile_norms(self, model: torch.nn.Module) -> int:
        """Give every RMSNorm module its class's forward, compiled once per class."""
        count = 0
        for module in model.modules():
            cls = type(module)
            if "RMSNorm" not in cls.__name__ or "forward" in module.__dict__:
                continue
            if cls not in self._forwards:
                self._forwards[cls] = Guarded(cls.forward)
            module.forward = types.MethodType(self._forwards[cls], module)
            count += 1
        return count

    def attention(self, module: torch.nn.Module, *args, **kwargs):
        """The eager attention of ``module``'s own modeling file, compiled once per file."""
        name = type(module).__module__
        if name not in self._attention:
            eager = importlib.import_module(name).eager_attention_forward
            self._attention[name] = Guarded(eager)
        return self._attention[name](module, *args, **kwargs)

    def compile_attention(self, model: torch.nn.Module) -> bool:
        """Switch ``model`` (a transformers model) to the compiled eager attention; False (and
        nothing changed) when its attention modules' file has no eager function."""
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, eager_mask

        layers = [m for m in model.modules() if type(m).__name__.endswith("Attention")]
        if not layers or not all(
            hasattr(importlib.import_module(type(m).__module__), "eager_attention_forward")
            for m in layers
        ):
            return False
        AttentionInterface.register(ATTENTION, self.attention)
        AttentionMaskInterface.register(ATTENTION, eager_mask)
        model.set_attn_implementation(ATTENTION)
        return True


def _probe() -> str | None:
    """None if torch.compile works here, else why not."""
    try:
        fn = torch.compile(lambda a: (a * 2 + 1).relu())
        out = fn(torch.arange(8, dtype=torch.float32))
        if out[3].item() != 7.0:
            return "a compiled test function gave a wrong result"
    except Exception as exc:  # the compiler's failures have no common type
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
    return None


def choose(mode: str, device_type: str, lora: bool) -> tuple[Kernels | None, str]:
    """The kernels to train with, and a line saying which and why."""
    if mode not in MODES:
        raise ConfigError(f"train_compile must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "off":
        return None, "kernels: plain (train_compile=off)"
    if device_type != "cpu" or not lora:
        if mode == "on":
            raise ConfigError("train_compile=on is for LoRA training on a CPU")
        return None, "kernels: plain"
    problem = _probe()
    if problem:
        if mode == "on":
            raise ConfigError(
                f"torch.compile does not work here ({problem})",
                hint="install a C++ compiler, or set train_compile=off",
            )
        return None, f"kernels: plain (torch.compile unavailable: {problem})"
    return Kernels(), "kernels: compiled (norms, attention, dropout)"
