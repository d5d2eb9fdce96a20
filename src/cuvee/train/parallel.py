"""How the training loop spreads over processes: one process, DDP, or FSDP.

The loop asks its strategy four things: which module to call for a micro-batch, whether
gradients synchronise after it, and how to read and restore the trainable weights and the
optimizer state as plain, whole tensors (for checkpoints and for the model written to the
store). Each strategy answers them its own way; the loop stays the same. ``Dist`` is this
process's place in the run and ``device_for`` its device and process group, both read from
what the launcher (torchrun, accelerate launch) put in the environment.

- ``single``: one process.
- ``ddp``: a full model per process, gradients all-reduced (torch DDP).
- ``fsdp``: parameters, gradients and optimizer state sharded per decoder layer (FSDP2,
  ``torch.distributed.fsdp.fully_shard``). Chosen when ``accelerate launch`` runs a config with
  ``distributed_type: FSDP`` (it sets ACCELERATE_USE_FSDP) or when CUVEE_PARALLEL=fsdp.

DeepSpeed's engine wants to own the optimizer and the backward pass; this loop does not hand
them over, so a DeepSpeed launch is refused with the FSDP equivalent named."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from cuvee.errors import ConfigError
from cuvee.train.surgery import causal_lm

_PREFIX = "model."  # the peft/transformers model sits at the loss module's .model


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class Dist:
    """This process's place in a data-parallel run (torchrun / accelerate launch set the env)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Dist:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def device_for(dist: Dist, wanted: str = "auto", group: bool = False) -> torch.device:
    """This process's device (its local GPU, or the CPU), and with ``group`` the process group
    joined, as the launcher's environment describes it."""
    if wanted == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device is cuda but torch sees no CUDA GPU", hint="use auto or cpu")
    if wanted != "cpu" and torch.cuda.is_available():
        if dist.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"process {dist.local_rank} of this node has no GPU: "
                f"{torch.cuda.device_count()} visible",
                hint="start one process per GPU (--gpus N no more than the GPUs on a node)",
            )
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if group and not torch.distributed.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            raise ConfigError(
                "sharded training needs a launcher",
                hint="start it with torchrun or accelerate launch (see cuvee train --launcher)",
            )
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


class Single:
    name = "single"
    shards_weights = False

    def wrap(self, loss_fn: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        return loss_fn

    def accumulating(self, module: torch.nn.Module, last: bool):
        return nullcontext()

    def trainable_state(self, loss_fn: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {
            name: p.detach().contiguous().cpu()
            for name, p in loss_fn.model.named_parameters()
            if p.requires_grad
        }

    def optimizer_state(self, loss_fn, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return optimizer.state_dict()

    def load_state(self, loss_fn, optimizer, weights: dict[str, torch.Tensor], opt_state) -> None:
        params = dict(loss_fn.model.named_parameters())
        with torch.no_grad():
            for name, tensor in weights.items():
                params[name].copy_(tensor)
        if optimizer is not None:
            optimizer.load_state_dict(opt_state)


class DDP(Single):
    name = "ddp"

    def wrap(self, loss_fn: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        return torch.nn.parallel.DistributedDataParallel(
            loss_fn, device_ids=[device.index] if device.type == "cuda" else None
        )

    def accumulating(self, module, last: bool):
        return nullcontext() if last else module.no_sync()


class FSDP(Single):
    """FSDP2: each decoder layer is a unit whose weights are gathered for its forward and
    backward and freed after; embeddings, final norm and head form the root unit (the loss, so
    the head is gathered for the loss too)."""

    name = "fsdp"
    shards_weights = True

    def __init__(self, reshard_after_forward: bool = True) -> None:
        self.reshard_after_forward = reshard_after_forward

    def wrap(self, loss_fn: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        # an explicit mesh on the training device: left alone, FSDP picks CUDA whenever a GPU
        # is visible, even for a run told to stay on the CPU
        mesh = init_device_mesh(device.type, (dist.get_world_size(),))
        # Every process starts from the main process's weights. Under `accelerate launch` with
        # FSDP, transformers loads the checkpoint on local rank 0 only and leaves the other
        # processes' tensors unset (fsdp_cpu_ram_efficient_loading, on by default), expecting
        # a broadcast; this is that broadcast, and harmless when every process loaded them.
        with torch.no_grad():
            for tensor in [*loss_fn.parameters(), *loss_fn.buffers()]:
                dist.broadcast(tensor.data, src=0)

        layers = getattr(causal_lm(loss_fn.model).get_decoder(), "layers", None)
        if layers is None:
            raise ConfigError("FSDP needs a decoder with a `layers` list; this model has none")
        for layer in layers:
            fully_shard(layer, mesh=mesh, reshard_after_forward=self.reshard_after_forward)
        fully_shard(loss_fn, mesh=mesh, reshard_after_forward=self.reshard_after_forward)
        return loss_fn

    def accumulating(self, module, last: bool):
        module.set_requires_gradient_sync(last)
        return nullcontext()

    @staticmethod
    def _options(**kw):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, **kw)

    def trainable_state(self, loss_fn: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Whole tensors on the main process (a collective: every process must call it)."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        full = get_model_state_dict(
            loss_fn, options=self._options(cpu_offload=True, ignore_frozen_params=True)
        )
        wanted = {n for n, p in loss_fn.model.named_parameters() if p.requires_grad}
        # tied weights come back under every name they have, frozen ones too: keep the trained
        return {
            k: v for k, v in ((k.removeprefix(_PREFIX), v) for k, v in full.items()) if k in wanted
        }

    def optimizer_state(self, loss_fn, optimizer) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(loss_fn, optimizer, options=self._options(cpu_offload=True))

    def load_state(self, loss_fn, optimizer, weights, opt_state) -> None:
        from torch.distributed.checkpoint.state_dict import (
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        set_model_state_dict(
            loss_fn,
            {_PREFIX + k: v for k, v in weights.items()},
            options=self._options(strict=False),
        )
        set_optimizer_state_dict(
            loss_fn, optimizer, optim_state_dict=opt_state, options=self._options()
        )


STRATEGIES: dict[str, Callable[[], Single]] = {
    "single": Single,
    "ddp": DDP,
    "fsdp": lambda: FSDP(
        reshard_after_forward=os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower()
        not in ("0", "false", "no")
    ),
}


def choose(world: int, environ: dict[str, str] | None = None) -> Single:
    """The strategy for this process, from what the launcher put in the environment."""
    env = os.environ if environ is None else environ
    if _truthy(env.get("ACCELERATE_USE_DEEPSPEED")):
        raise ConfigError(
            "cuvee's training loop does not drive DeepSpeed",
            hint="for ZeRO-3-like sharding use --strategy fsdp; for ZeRO-2 memory savings at "
            "less communication, fsdp with fsdp_reshard_after_forward: false",
        )
    wanted = env.get("CUVEE_PARALLEL") or (
        "fsdp" if _truthy(env.get("ACCELERATE_USE_FSDP")) else ""
    )
    if not wanted:
        wanted = "ddp" if world > 1 else "single"
    if wanted not in STRATEGIES:
        raise ConfigError(
            f"CUVEE_PARALLEL={wanted!r} is not one of {', '.join(STRATEGIES)}",
        )
    if wanted == "ddp" and world == 1:
        wanted = "single"
    return STRATEGIES[wanted]()
