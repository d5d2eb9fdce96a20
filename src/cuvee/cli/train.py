"""`cuvee train`: instruction-tune a stored base model from a recipe and/or flags."""

from __future__ import annotations

import sys

import click

from cuvee.cli.output import print_json

# flag name -> recipe key, for the flags that override a recipe knob one to one.
_KNOBS = (
    "base",
    "name",
    "method",
    "epochs",
    "max_steps",
    "time_budget",
    "lr",
    "seq_len",
    "batch_size",
    "grad_accum",
    "lora_r",
    "lora_alpha",
    "eval_split",
    "augment",
    "seed",
    "precision",
)


def _quiet_libraries() -> None:
    """cuvee draws its own progress; the libraries' loading bars and deprecation chatter would
    only break it up."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)


def _list_recipes() -> None:
    from cuvee.train.recipe import shipped_recipes

    for name, path in shipped_recipes().items():
        first = path.read_text(encoding="utf-8").splitlines()[0].lstrip("# ").strip()
        click.echo(f"{name:<20} {first}")


@click.command("train")
@click.argument("recipe", required=False)
@click.option("--base", help="Stored base model [recipe; else the default_base setting].")
@click.option(
    "--data",
    multiple=True,
    help="Training data file (repeatable); `starter` is the bundled set.",
)
@click.option("--name", help="Name of the fine-tuned model in the store.")
@click.option("--method", type=click.Choice(["lora", "full"]), help="LoRA adapters or all weights.")
@click.option("--epochs", type=float, help="Passes over the data.")
@click.option("--max-steps", type=int, help="Stop after this many optimizer steps.")
@click.option("--time-budget", help="Stop and save after this long, e.g. 10m, 2h.")
@click.option("--lr", type=float, help="Peak learning rate.")
@click.option("--seq-len", type=int, help="Tokens per packed row.")
@click.option("--batch-size", type=int, help="Rows per micro-batch (per process).")
@click.option("--grad-accum", type=int, help="Micro-batches per optimizer step.")
@click.option("--lora-r", type=int, help="LoRA rank.")
@click.option("--lora-alpha", type=int, help="LoRA scaling numerator.")
@click.option("--lora-targets", help="Comma-separated module names, or all-linear.")
@click.option("--eval-split", help="Held-out fraction (0.05), auto, or none.")
@click.option(
    "--augment",
    type=click.IntRange(0, 4),
    help="Add N format-constrained variants of each training record (0 turns it off).",
)
@click.option("--seed", type=int, help="Seed for data order, splits and initialisation.")
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]))
@click.option("--train-on-prompt", is_flag=True, default=None, help="Learn prompt tokens too.")
@click.option("--no-packing", is_flag=True, default=False, help="One record per row.")
@click.option("--merge", is_flag=True, default=None, help="Also store merged full weights.")
@click.option("--author", "authors", multiple=True, help="Contributor named in the model card.")
@click.option(
    "--report-to",
    multiple=True,
    type=click.Choice(["tensorboard", "mlflow"]),
    help="Also log metrics there (must be installed).",
)
@click.option("--resume", "resume", metavar="RUN", help="Continue a stopped run (dir or name).")
@click.option("--force", is_flag=True, help="Replace a stored model of the same name.")
@click.option(
    "--launcher",
    type=click.Choice(["torchrun", "accelerate"]),
    help="Print (and write configs for) a multi-process launch instead of training here.",
)
@click.option("--gpus", type=int, default=None, help="Processes per node for --launcher.")
@click.option("--nodes", type=int, default=1, show_default=True, help="Nodes for --launcher.")
@click.option(
    "--strategy",
    type=click.Choice(["ddp", "fsdp", "fsdp-grad-op"]),
    default="ddp",
    show_default=True,
    help="Data parallelism for --launcher: ddp (a model per GPU), fsdp (sharded, like "
    "ZeRO-3) or fsdp-grad-op (gradients and optimizer sharded, like ZeRO-2).",
)
@click.option("--list-recipes", is_flag=True, help="List the shipped recipes and exit.")
@click.option(
    "--eval-suite",
    "eval_suites",
    multiple=True,
    help="Evaluate base and result on this suite when training ends (repeatable; see cuvee eval).",
)
@click.option(
    "--eval-limit", type=click.IntRange(1), default=None, help="Only the first N items per suite."
)
@click.option("--json", "json_output", is_flag=True, help="Print the run summary as JSON.")
@click.pass_obj
def train(
    settings,
    recipe,
    data,
    lora_targets,
    train_on_prompt,
    no_packing,
    merge,
    authors,
    report_to,
    resume,
    force,
    launcher,
    gpus,
    nodes,
    strategy,
    list_recipes,
    eval_suites,
    eval_limit,
    json_output,
    **knobs,
) -> None:
    """Instruction-tune a base model on your data (LoRA or full), on this CPU by default.

    RECIPE is a YAML file or a shipped recipe name; flags override its knobs. The model is
    registered in the store only when training completes, with its lineage and MODEL_CARD.md.
    Ctrl-C stops after the current step and saves a checkpoint for --resume.

    Examples:

      cuvee train --base gemma3-270m --data starter --name demo --time-budget 10m

      cuvee train starter-lora-cpu --data mine.jsonl --name mine --author "A. Person"

      cuvee train --resume demo
    """
    from cuvee.train.recipe import build_recipe

    if list_recipes:
        _list_recipes()
        return
    overrides = {k: knobs[k] for k in _KNOBS if knobs.get(k) is not None}
    if data:
        overrides["data"] = list(data)
    if lora_targets:
        overrides["lora_targets"] = [t.strip() for t in lora_targets.split(",") if t.strip()]
    if train_on_prompt:
        overrides["train_on_prompt"] = True
    if no_packing:
        overrides["packing"] = False
    if merge:
        overrides["merge"] = True
    if authors:
        overrides["authors"] = list(authors)
    if report_to:
        overrides["report_to"] = list(report_to)

    if launcher:
        from cuvee.train.launch import launch_plan

        built = build_recipe(recipe, overrides)
        plan = launch_plan(settings, built, launcher, strategy, gpus=gpus, nodes=nodes)
        if json_output:
            print_json(plan.to_json())
        else:
            click.echo(plan.describe())
        return

    from cuvee.train.sft import find_run
    from cuvee.train.sft import train as run_training

    resume_dir = None
    if resume:
        if recipe:
            raise click.UsageError("give either a RECIPE or --resume RUN, not both")
        allowed = {"time_budget", "max_steps"}
        extra = set(overrides) - allowed
        if extra:
            raise click.UsageError(
                f"--resume continues the run's own recipe; only --time-budget and --max-steps "
                f"may change (got {', '.join(sorted(extra))})"
            )
        resume_dir = find_run(settings, resume)
        built = build_recipe(resume_dir / "recipe.yaml", overrides)
    else:
        built = build_recipe(recipe, overrides)

    if eval_suites:
        from cuvee.train.evaluation import check_suites

        check_suites(settings, list(eval_suites))
    _quiet_libraries()
    display = None
    if not json_output:
        from cuvee.train.display import RichDisplay

        display = RichDisplay()
    result = run_training(settings, built, display=display, resume_dir=resume_dir, replace=force)
    summary = result.summary
    if result.model is None:  # a non-main process of a distributed run: rank 0 reports
        return
    if eval_suites:
        from cuvee.cli.output import reporter_for
        from cuvee.train.evaluation import evaluate_and_record

        summary["evaluation"] = evaluate_and_record(
            settings, summary["model"], list(eval_suites), eval_limit, reporter_for(json_output)
        )
    if json_output:
        print_json(summary)
        return
    out = click.get_text_stream("stderr")
    from cuvee.licences import commercial_use_label

    verdict = commercial_use_label(summary["commercial_use"])
    lines = [
        f"model {summary['model']} registered ({summary['steps']} steps, "
        f"{summary['wall_time_s'] / 60:.1f} min, {summary['tokens_per_s']:.0f} tok/s, "
        f"~${summary['estimated_cost_usd']:.3f})",
    ]
    if summary["eval_loss"] is not None:
        lines.append(
            f"held-out loss {summary['eval_loss']:.4f} (base {summary['base_eval_loss']:.4f})"
        )
    lines.append(f"commercial use: {verdict}")
    reasons = result.model.manifest.model_dump().get("commercial_use_reasons") or []
    lines += [f"  - {r}" for r in reasons]
    for label, suite in summary.get("evaluation", {}).get("suites", {}).items():
        for model, metrics in suite["metrics"].items():
            shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float))
            lines.append(f"{label} / {model}: {shown}")
    lines.append(f"model card: {result.model.path / 'MODEL_CARD.md'}")
    click.echo("\n".join(lines), file=out)
    if summary["commercial_use"] is not True:
        click.echo(
            "warning: check the licences above before any commercial use of this model",
            file=out,
        )
    sys.stdout.flush()
