"""The training loop every objective shares: explicit, nothing hidden in a trainer framework.

What is learned is the recipe's ``method``, an Objective (objectives.py: supervised fine-tuning
in sft.py, preference tuning in preference.py); everything else is here, the same for all.

Per optimizer step: the step's micro-batches are known in advance (the data order is a pure
function of seed, epoch and step), so the loss of each micro-batch is its summed loss divided by
the whole step's count of what the objective averages over (supervised tokens, or examples),
across all processes: gradient accumulation and data parallelism give the same update as one
big batch. A run stops at its step count or its time budget, or on Ctrl-C after the current
step, with a checkpoint it can resume from exactly.

``_train`` reads as the run goes: check the request; set up this process's ``Session`` (its
device and strategy: parallel.py; the data and loss: the objective; the model: surgery.py; the
schedule and time budget: schedule.py; the run's directory: rundir.py); let the objective do
what it needs before the first step (the reference log-probabilities of preference tuning);
start from a new ``RunState`` or the latest checkpoint's (checkpoint.py); measure the base on
the held-out set; ``_loop`` over the steps; register the model (register.py)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cuvee.config import Settings
from cuvee.errors import ConfigError, CuveeError
from cuvee.store import ModelStore, StoredModel, check_name
from cuvee.train import checkpoint as ckpt
from cuvee.train import rundir
from cuvee.train.data import Prepared
from cuvee.train.display import Display, SilentDisplay
from cuvee.train.kernels import choose as choose_kernels
from cuvee.train.objectives import Objective, objective_for
from cuvee.train.parallel import Dist, Single, device_for
from cuvee.train.parallel import choose as choose_parallel
from cuvee.train.recipe import Recipe
from cuvee.train.rundir import find_run as find_run  # cuvee.cli.train and tests look it up here
from cuvee.train.schedule import Schedule, TimeBudget, lr_at, warmup_for
from cuvee.train.surgery import build_model, precision_for
from cuvee.train.throughput import (
    Meter,
    hardware,
    peak_memory_mb,
    price_per_hour,
)
from cuvee.train.tracking import Tracker, check_trackers, open_trackers

# a time budget that fits fewer optimizer steps than this (and fewer than the run would take
# without it) gets a hint: a few LoRA steps leave the model nearly as it was
FEW_STEPS = 30


def few_steps_hint(planned: int, limit: int) -> str:
    """What to add to a time budget's plan of ``planned`` steps (of ``limit`` without it)."""
    if planned >= min(FEW_STEPS, limit):
        return ""
    return (
        "; so few steps change the model little: give a longer --time-budget (`cuvee doctor` "
        "says whether this CPU trains in bf16 or the slower fp32)"
    )


class Interrupted(CuveeError):
    """Training stopped on request; a checkpoint was saved."""

    exit_code = 130


@dataclass
class RunResult:
    run_dir: Path
    model: StoredModel | None
    summary: dict[str, Any]
    losses: list[float]


def train(
    settings: Settings,
    recipe: Recipe,
    *,
    display: Display | None = None,
    resume_dir: Path | None = None,
    replace: bool = False,
    stop_after_step: int | None = None,
    on_step: Callable[[int, dict[str, Any]], None] | None = None,
) -> RunResult:
    """Run (or resume) a training run and register the model when it completes.

    ``stop_after_step`` stops as a Ctrl-C would, after that step (used to test resume)."""
    distributed = torch.distributed.is_available()
    had_group = distributed and torch.distributed.is_initialized()
    try:
        return _train(
            settings,
            recipe,
            display=display,
            resume_dir=resume_dir,
            replace=replace,
            stop_after_step=stop_after_step,
            on_step=on_step,
        )
    finally:
        # A process group this run opened is closed by it: left to the interpreter's exit,
        # gloo's threads were sometimes torn down running ("terminate called without an
        # active exception", SIGABRT in one rank of an accelerate-launched FSDP run).
        if distributed and not had_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _train(
    settings: Settings,
    recipe: Recipe,
    *,
    display: Display | None,
    resume_dir: Path | None,
    replace: bool,
    stop_after_step: int | None,
    on_step: Callable[[int, dict[str, Any]], None] | None,
) -> RunResult:
    display = display or SilentDisplay()
    dist = Dist.from_env()
    parallel = choose_parallel(dist.world)
    store = ModelStore(settings.models_dir)
    recipe = _checked(settings, store, recipe, resume_dir, replace)

    torch.manual_seed(recipe.seed)  # before the model is built: the adapters start random
    run = _set_up(settings, store, recipe, dist, parallel, resume_dir)
    # before a checkpoint's weights are loaded: the model is still its parent here
    started = time.perf_counter()
    run.objective.before_training(run, display)
    # that work (preference tuning's reference pass) counts in the time budget, the wall time
    # and the cost, as the held-out pass before the first step does
    before_s = time.perf_counter() - started
    state = _starting_state(run, resuming=resume_dir is not None, display=display)
    meter = Meter(
        price_per_hour(run.device.type, run.dist.world, settings),
        elapsed_before=state.elapsed_s + before_s,
    )
    trackers = open_trackers(run.run_dir, recipe.report_to, recipe.resolved()) if run.main else []
    display.message(_opening_line(run))
    display.message(run.kernels_line)
    if state.base_eval_loss is None and run.prepared.eval_rows:
        held_out = _held_out(run)
        state.base_eval_loss = held_out["eval_loss"]
        state.evals.append({"step": 0, **held_out})
        display.message(f"held-out loss before training: {state.base_eval_loss:.4f}")
        for t in trackers:
            t.log(0, held_out)

    session_start_step = state.step
    finished = _loop(run, state, meter, trackers, display, stop_after_step, on_step)

    state.elapsed_s = meter.elapsed
    if not finished:
        raise Interrupted(
            f"training stopped at step {state.step} of {state.total_steps}; "
            f"checkpoint saved in {rundir.checkpoints(run.run_dir)}",
            hint=f"continue with: cuvee train --resume {run.run_dir}",
        )
    summary = _summary(run, state, meter, session_start_step)
    stored = _register(run, store, summary, replace)
    return RunResult(run.run_dir, stored, summary, state.losses)


def _checked(
    settings: Settings, store: ModelStore, recipe: Recipe, resume_dir: Path | None, replace: bool
) -> Recipe:
    """The recipe with its base filled in, once nothing stands in the run's way."""
    if recipe.base is None:
        recipe = recipe.model_copy(update={"base": settings.default_base})
    if not recipe.name:
        raise ConfigError("the fine-tuned model needs a name", hint="pass --name NAME")
    check_name(recipe.name)
    if resume_dir is not None and rundir.completed(resume_dir):
        raise ConfigError(
            f"{resume_dir}: this run already completed and registered {recipe.name!r}",
            hint="nothing to resume; start a new run to train further",
        )
    if store.exists(recipe.name) and not replace:
        raise ConfigError(
            f"a model named {recipe.name!r} is already in the store",
            hint="choose another --name, or pass --force to replace it when training completes",
        )
    check_trackers(recipe.report_to)
    return recipe


@dataclass
class Session:
    """What this process sets up before a run's first step, or again when it resumes: where it
    runs, the data and its schedule, the model with its loss and optimizer, the run's
    directory."""

    recipe: Recipe
    objective: Objective
    dist: Dist
    parallel: Single
    device: torch.device
    precision: str
    prepared: Prepared
    schedule: Schedule
    budget: TimeBudget
    run_dir: Path
    compiled: bool  # whether the CPU kernels are compiled (kernels.py)
    kernels_line: str
    model: torch.nn.Module
    loss_fn: torch.nn.Module  # the objective's loss module over the model
    trainable_names: set[str]  # as the model names them, before any wrapping
    n_trainable: int  # trainable parameters
    step_module: torch.nn.Module  # loss_fn as the parallel strategy wraps it
    trainable: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer

    @property
    def main(self) -> bool:
        return self.dist.main

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()


def _set_up(
    settings: Settings,
    store: ModelStore,
    recipe: Recipe,
    dist: Dist,
    parallel: Single,
    resume_dir: Path | None,
) -> Session:
    device = device_for(dist, settings.device, group=dist.world > 1 or parallel.shards_weights)
    precision = precision_for(recipe, device.type)
    objective = objective_for(recipe)
    prepared = objective.prepare(store, recipe)
    run_dir = resume_dir or rundir.new_run_dir(settings, recipe.name)
    if dist.main:
        rundir.create(run_dir, recipe)

    kernels, kernels_line = choose_kernels(
        settings.train_compile, device.type, recipe.adapter == "lora"
    )
    model = build_model(store, prepared, precision, device, kernels)
    loss_fn = objective.loss_module(model, _compute_dtype(precision), recipe)
    loss_fn.train()  # transformers loads models in eval mode: no dropout, no recomputation
    trainable_names = {n for n, p in model.named_parameters() if p.requires_grad}
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # The optimizer is made after wrapping: FSDP replaces parameters with sharded ones.
    step_module = parallel.wrap(loss_fn, device)
    trainable = [p for p in loss_fn.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=recipe.lr, weight_decay=recipe.weight_decay, betas=(0.9, 0.999)
    )
    schedule = Schedule(
        len(prepared.train_rows),
        recipe.batch_size,
        recipe.grad_accum,
        recipe.epochs,
        recipe.seed,
        dist.world,
    )
    budget = TimeBudget(
        recipe.time_budget_s, recipe.max_steps or schedule.steps_for_epochs, recipe.warmup_ratio
    )
    return Session(
        recipe=recipe,
        objective=objective,
        dist=dist,
        parallel=parallel,
        device=device,
        precision=precision,
        prepared=prepared,
        schedule=schedule,
        budget=budget,
        run_dir=run_dir,
        compiled=kernels is not None,
        kernels_line=kernels_line,
        model=model,
        loss_fn=loss_fn,
        trainable_names=trainable_names,
        n_trainable=n_trainable,
        step_module=step_module,
        trainable=trainable,
        optimizer=optimizer,
    )


def _compute_dtype(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision == "bf16" else torch.float32


def _starting_state(run: Session, *, resuming: bool, display: Display) -> ckpt.RunState:
    """A new run's state, or a resumed one's from its latest checkpoint (its weights, optimizer
    state and random number generators restored with it)."""
    recipe = run.recipe
    if not resuming:
        total_steps = run.schedule.steps_for_epochs
        if recipe.max_steps:
            total_steps = min(total_steps, recipe.max_steps)
        state = ckpt.RunState(total_steps=total_steps, parallel=run.parallel.name)
    else:
        latest = ckpt.list_checkpoints(rundir.checkpoints(run.run_dir))
        if not latest:
            raise ConfigError(f"{run.run_dir}: the run has no checkpoint to resume from")
        state, weights, opt_state = ckpt.load_run(latest[-1], run.trainable_names)
        if (state.parallel == "fsdp") != run.parallel.shards_weights:  # optimizer states differ
            raise ConfigError(
                f"{latest[-1]}: saved by a {state.parallel} run; this one is {run.parallel.name}",
                hint="resume with the launcher and strategy the run started with",
            )
        run.parallel.load_state(run.loss_fn, run.optimizer, weights, opt_state)
        display.message(f"resumed {run.run_dir.name} at step {state.step}")
    # kept in the state: a resumed run goes on with the warm-up it had, whatever re-plans did
    state.warmup = state.warmup or warmup_for(recipe.warmup_ratio, state.total_steps, 0)
    return state


def _opening_line(run: Session) -> str:
    recipe, prepared = run.recipe, run.prepared
    return (
        f"{run.objective.label(recipe)} on {recipe.base}: {run.n_trainable:,} trainable "
        f"parameters, {prepared.train_records} train / {prepared.eval_records} eval records "
        f"({prepared.split_how}), {len(prepared.train_rows)} packed rows of {recipe.seq_len}, "
        f"{run.precision} on {run.device.type}; run {run.run_dir}"
    )


def _loop(
    run: Session,
    state: ckpt.RunState,
    meter: Meter,
    trackers: list[Tracker],
    display: Display,
    stop_after_step: int | None,
    on_step: Callable[[int, dict[str, Any]], None] | None,
) -> bool:
    """Train from ``state.step`` to the planned last step, saving checkpoints on the way.
    Returns False when it stopped early on request (Ctrl-C, ``stop_after_step``), with a
    checkpoint of where it stopped."""
    recipe, budget = run.recipe, run.budget
    warned_few = False
    with _CtrlC(display) as ctrl_c:
        display.start(state.total_steps, state.step)
        try:
            while state.step < state.total_steps:
                started = time.perf_counter()
                lr = lr_at(state.step, state.total_steps, state.warmup, recipe.lr)
                loss, tokens, supervised, measured = _optimizer_step(
                    run, run.schedule.step(state.step), lr
                )
                state.record(loss, tokens, supervised, measured)
                meter.add(tokens, supervised)
                budget.step_took(time.perf_counter() - started)

                plan = budget.replan(state.step, state.total_steps, state.warmup, meter.elapsed)
                if plan is not None:
                    state.total_steps, state.warmup = plan.total_steps, plan.warmup
                    hint = "" if warned_few else few_steps_hint(state.total_steps, budget.limit)
                    warned_few = warned_few or bool(hint)
                    display.message(
                        f"time budget {recipe.time_budget}: {plan.per_step:.1f} s/step, "
                        f"planning {state.total_steps} steps{hint}"
                    )

                metrics: dict[str, Any] = {
                    "loss": loss,
                    "lr": lr,
                    "tokens": tokens,
                    "tokens_per_s": meter.tokens_per_s() or tokens / max(budget.last_step, 1e-9),
                    "elapsed_s": meter.elapsed,
                    "eta_s": Meter.eta(state.step, state.total_steps, budget.per_step),
                    "cost_usd": meter.cost(),
                    **measured,
                }
                if run.prepared.eval_rows and (
                    state.step % recipe.eval_every == 0 or state.step == state.total_steps
                ):
                    held_out = _held_out(run)
                    metrics.update(held_out)
                    state.evals.append({"step": state.step, **held_out})
                for t in trackers:
                    t.log(state.step, metrics)
                if on_step:
                    on_step(state.step, metrics)
                display.update(state.step, state.total_steps, metrics)

                if budget.spent(meter.elapsed):
                    state.total_steps = state.step
                asked = ctrl_c.requested or (
                    stop_after_step is not None and state.step >= stop_after_step
                )
                finished = state.step >= state.total_steps
                if (asked or state.step % recipe.save_every == 0) and not finished:
                    state.elapsed_s = meter.elapsed
                    _save_checkpoint(run, state)
                if asked and not finished:
                    return False
        finally:
            display.close()
            for t in trackers:
                t.close()
    return True


def _optimizer_step(
    run: Session, slots: list[list[list[int]]], lr: float
) -> tuple[float, int, int, dict[str, float]]:
    """One optimizer step over the step's micro-batches (``slots``: Schedule.step). Returns the
    step's loss per what the objective averages over (supervised tokens, or examples), the
    tokens and supervised tokens it saw, and the objective's own metrics, over all processes."""
    rows_of = run.prepared.train_rows
    dist, objective = run.dist, run.objective
    global_n = sum(objective.weight(rows_of[i]) for slot in slots for rows in slot for i in rows)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    loss_sum, tokens, sup = 0.0, 0, 0
    stats: torch.Tensor | None = None
    for a, slot in enumerate(slots):
        rows = [rows_of[i] for i in slot[dist.rank]]
        if not rows:
            continue
        batch = objective.batch(rows, run.device)
        with run.parallel.accumulating(run.step_module, a == len(slots) - 1), run.autocast():
            loss, measured = objective.split(run.step_module(**batch))
        (loss * (dist.world / max(global_n, 1))).backward()
        loss_sum += float(loss.detach())
        if measured is not None:
            stats = measured.detach() if stats is None else stats + measured.detach()
        tokens += sum(r.real_tokens for r in rows)
        sup += sum(r.supervised for r in rows)
    stats = objective.zero_stats(run.device) if stats is None else stats
    if dist.world > 1:
        totals = torch.tensor([loss_sum, tokens, sup], dtype=torch.float64, device=run.device)
        totals = torch.cat([totals, stats.to(torch.float64)])
        torch.distributed.all_reduce(totals)
        loss_sum, tokens, sup = totals[0].item(), int(totals[1]), int(totals[2])
        stats = totals[3:]
    if run.recipe.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(run.trainable, run.recipe.max_grad_norm)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return loss_sum / max(global_n, 1), tokens, sup, objective.metrics(stats.tolist())


def _held_out(run: Session) -> dict[str, float]:
    """The objective's held-out metrics (``eval_loss`` and its own); the time it took is kept
    for the time budget's plan."""
    started = time.perf_counter()
    metrics = run.objective.held_out(
        run.loss_fn, run.prepared.eval_rows, run.recipe.batch_size, run.device, run.autocast
    )
    run.budget.eval_seconds = time.perf_counter() - started
    return metrics


def _save_checkpoint(run: Session, state: ckpt.RunState) -> None:
    # gathering whole tensors is collective under FSDP: every process takes part
    weights = run.parallel.trainable_state(run.loss_fn)
    opt_state = run.parallel.optimizer_state(run.loss_fn, run.optimizer)
    if run.main:
        ckpt.save(
            rundir.checkpoints(run.run_dir),
            state.step,
            weights,
            opt_state,
            state,
            run.recipe.keep_checkpoints,
        )


class _CtrlC:
    """The first Ctrl-C asks the loop to stop after the current step and save a checkpoint; a
    second one aborts. Only the main thread can take the signal; elsewhere this does nothing."""

    def __init__(self, display: Display) -> None:
        self.display = display
        self.requested = False
        self._previous = None

    def __enter__(self) -> _CtrlC:
        if _main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _on_sigint(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.display.message(
            "stopping after this step to save a checkpoint (Ctrl-C again to abort)"
        )


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _register(
    run: Session, store: ModelStore, summary: dict[str, Any], replace: bool
) -> StoredModel | None:
    """Put the trained model in the store (on the main process; None elsewhere), add its name
    and commercial-use label to ``summary``, and complete the run's directory."""
    final = run.model
    if run.parallel.shards_weights:
        # the store gets a plain model: whole trained tensors put into a fresh copy on main
        weights = run.parallel.trainable_state(run.loss_fn)
        if run.main:
            final = build_model(store, run.prepared, run.precision, torch.device("cpu"))
            module = run.objective.loss_module(final, _compute_dtype(run.precision), run.recipe)
            Single().load_state(module, None, weights, None)
    if not run.main:
        return None
    from cuvee.train.register import register_model

    stored = register_model(
        store, run.prepared, final, summary, replace=replace, merge=run.recipe.merge
    )
    summary["model"] = stored.manifest.name
    summary["commercial_use"] = stored.manifest.model_dump().get("commercial_use")
    rundir.complete(run.run_dir, summary)
    return stored


def _summary(
    run: Session, state: ckpt.RunState, meter: Meter, session_start_step: int
) -> dict[str, Any]:
    prepared = run.prepared
    hw = hardware(run.device.type, run.dist.world)
    hw["kernels"] = "compiled" if run.compiled else "plain"
    tail = state.losses[-10:]
    evals = [e for e in state.evals if e["step"] > 0]
    wall = state.elapsed_s
    extra = run.objective.summary(run, state)
    return {
        "run_dir": str(run.run_dir),
        "steps": state.step,
        "train_records": prepared.train_records,
        "eval_records": prepared.eval_records,
        "eval_split": prepared.split_how,
        "encode": prepared.encode_stats,
        "train_rows": len(prepared.train_rows),
        "trainable_parameters": run.n_trainable,
        "precision": run.precision,
        "parallel": state.parallel,
        "hardware": hw,
        "wall_time_s": wall,
        "tokens_seen": state.tokens_seen,
        "supervised_tokens_seen": state.supervised_seen,
        "tokens_per_s": state.tokens_seen / wall if wall > 0 else 0.0,
        "peak_memory_mb": round(peak_memory_mb(hw["device"])),
        "price_per_hour": meter.price_per_hour,
        "estimated_cost_usd": meter.cost(wall),
        "train_loss": sum(tail) / len(tail) if tail else None,
        "eval_loss": evals[-1]["eval_loss"] if evals else None,
        "base_eval_loss": state.base_eval_loss,
        "resumed_at_step": session_start_step or None,
        **extra,
    }
