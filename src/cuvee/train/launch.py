"""Beyond one process: the launch command and config files for torchrun or accelerate.

cuvee does not schedule clusters; it writes what the existing launchers need (the strategies
themselves are in cuvee.train.parallel). The recipe is
resolved and written next to the configs so every process (and every node) trains the same
thing. The training loop reads RANK / WORLD_SIZE / LOCAL_RANK, which both launchers set, and
shards micro-batches across processes (see schedule.Schedule)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from cuvee.errors import ConfigError
from cuvee.train.recipe import Recipe

if TYPE_CHECKING:
    from cuvee.config import Settings


@dataclass(frozen=True)
class Strategy:
    name: str
    description: str
    launchers: tuple[str, ...]
    accelerate_type: str
    extra: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # for torchrun, what accelerate would set


def _fsdp(reshard_after_forward: bool) -> dict[str, Any]:
    return {
        "fsdp_config": {
            "fsdp_version": 2,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_reshard_after_forward": reshard_after_forward,
            "fsdp_state_dict_type": "FULL_STATE_DICT",
            # every process reads the checkpoint itself (cuvee broadcasts rank 0's weights too)
            "fsdp_cpu_ram_efficient_loading": False,
            "fsdp_sync_module_states": True,
        }
    }


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy(
            "ddp",
            "a full copy of the model per GPU, gradients all-reduced",
            ("torchrun", "accelerate"),
            "MULTI_GPU",
        ),
        Strategy(
            "fsdp",
            "parameters, gradients and optimizer state sharded per decoder layer, weights "
            "gathered for each layer's forward and again for its backward (like ZeRO-3)",
            ("torchrun", "accelerate"),
            "FSDP",
            _fsdp(True),
            {"CUVEE_PARALLEL": "fsdp"},
        ),
        Strategy(
            "fsdp-grad-op",
            "gradients and optimizer state sharded, weights kept whole from forward to "
            "backward: more memory than fsdp, less communication (like ZeRO-2)",
            ("torchrun", "accelerate"),
            "FSDP",
            _fsdp(False),
            {"CUVEE_PARALLEL": "fsdp", "FSDP_RESHARD_AFTER_FORWARD": "false"},
        ),
    )
}


@dataclass
class LaunchPlan:
    launcher: str
    strategy: str
    directory: Path
    files: dict[str, Path]
    command: list[str]
    processes: int

    def to_json(self) -> dict[str, Any]:
        return {
            "launcher": self.launcher,
            "strategy": self.strategy,
            "directory": str(self.directory),
            "files": {k: str(v) for k, v in self.files.items()},
            "command": shlex.join(self.command),
            "processes": self.processes,
        }

    def describe(self) -> str:
        lines = [f"wrote {p}" for p in self.files.values()]
        lines += [
            f"{self.strategy} over {self.processes} process(es); run this on every node:",
            "",
            "  " + shlex.join(self.command),
        ]
        return "\n".join(lines)


def accelerate_config(strategy: Strategy, processes: int, nodes: int) -> dict[str, Any]:
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": strategy.accelerate_type,
        "num_processes": processes,
        "num_machines": nodes,
        "machine_rank": 0,
        "main_training_function": "main",
        # cuvee runs its own bf16 autocast; accelerate must not add another.
        "mixed_precision": "no",
        "use_cpu": False,
        "rdzv_backend": "static",
        "same_network": True,
        **strategy.extra,
    }
    return config


def validate_accelerate_config(path: Path) -> None:
    """Load the file with accelerate's own config parser, as `accelerate launch` will."""
    from accelerate.commands.config.config_args import ClusterConfig

    try:
        ClusterConfig.from_yaml_file(str(path))
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"{path}: accelerate rejects the generated config: {exc}") from exc


def launch_plan(
    settings: Settings,
    recipe: Recipe,
    launcher: str,
    strategy_name: str,
    *,
    gpus: int | None,
    nodes: int = 1,
    directory: Path | None = None,
) -> LaunchPlan:
    strategy = STRATEGIES[strategy_name]
    if recipe.base is None:
        recipe = recipe.model_copy(update={"base": settings.default_base})
    if launcher not in strategy.launchers:
        raise ConfigError(
            f"{strategy_name} needs --launcher {' or '.join(strategy.launchers)}",
            hint="see cuvee train --help for the strategies",
        )
    if not recipe.name:
        raise ConfigError("the launch needs the model's name", hint="pass --name NAME")
    if not recipe.data:
        raise ConfigError("the launch needs training data", hint="pass --data FILE")
    missing = [d for d in recipe.data if d != "starter" and not Path(d).is_file()]
    if missing:
        raise ConfigError(f"data file(s) not found: {', '.join(missing)}")
    per_node = gpus or _local_gpus() or 1
    if per_node < 1 or nodes < 1:
        raise ConfigError("--gpus and --nodes must be at least 1")
    processes = per_node * nodes
    directory = directory or settings.runs_dir / f"launch-{recipe.name}"
    directory.mkdir(parents=True, exist_ok=True)
    # Absolute data paths: every process, on every node, must find the same files.
    resolved = recipe.model_copy(
        update={"data": [d if d == "starter" else str(Path(d).resolve()) for d in recipe.data]}
    )
    recipe_file = directory / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(resolved.resolved(), sort_keys=False), encoding="utf-8")
    files = {"recipe": recipe_file}
    train_args = ["-m", "cuvee", "train", str(recipe_file)]
    if launcher == "torchrun":
        command = ["env", *(f"{k}={v}" for k, v in strategy.env.items())] if strategy.env else []
        command += ["torchrun", f"--nnodes={nodes}", f"--nproc-per-node={per_node}"]
        if nodes > 1:
            command += ["--rdzv-backend=c10d", "--rdzv-endpoint=MAIN_HOST:29500"]
        command += train_args
    else:
        config_file = directory / "accelerate.yaml"
        config_file.write_text(
            yaml.safe_dump(accelerate_config(strategy, processes, nodes), sort_keys=False),
            encoding="utf-8",
        )
        validate_accelerate_config(config_file)
        files["accelerate"] = config_file
        command = ["accelerate", "launch", "--config_file", str(config_file)]
        if nodes > 1:
            command += ["--machine_rank", "NODE_RANK", "--main_process_ip", "MAIN_HOST"]
        command += train_args
    return LaunchPlan(launcher, strategy_name, directory, files, command, processes)


def _local_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0
