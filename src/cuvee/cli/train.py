"""`cuvee train`: instruction-tune a stored base model from a recipe and/or flags.

The recipe flags are generated from the fields of :class:`cuvee.train.recipe.Recipe`: one
``--kebab-case`` flag per field, its type and bounds from the field's annotation and
constraints, its help from the field's description; a new knob gets its flag by itself."""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import UnionType
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin

import click
from pydantic.fields import FieldInfo

from cuvee.cli.output import print_json

if TYPE_CHECKING:
    from cuvee.config import Settings

# Old flag names kept beside the generated --kebab-case one, by recipe field.
ALIASES: dict[str, tuple[str, ...]] = {"authors": ("--author",)}
# List knobs whose flag also takes comma-separated values (module names never hold a comma;
# file names and authors may, so theirs are only repeatable).
COMMA_SEPARATED = frozenset({"lora_targets"})


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _scalar_type(
    annotation: Any, metadata: list[Any], also: tuple[str, ...] = ()
) -> click.ParamType:
    """The click type of one value of a recipe field: a Choice for a Literal (plus the old
    values ``also`` the recipe still reads), a range for a bounded int or float, else the plain
    type (a union like float | str stays text, for the recipe's own validation)."""
    if get_origin(annotation) is Literal:
        return click.Choice([str(a) for a in get_args(annotation)] + list(also))
    bounds: dict[str, Any] = {}
    for rule in metadata:
        for attr, key, is_open in (("gt", "min", True), ("ge", "min", False)):
            if getattr(rule, attr, None) is not None:
                bounds.update({key: getattr(rule, attr), f"{key}_open": is_open})
        for attr, key, is_open in (("lt", "max", True), ("le", "max", False)):
            if getattr(rule, attr, None) is not None:
                bounds.update({key: getattr(rule, attr), f"{key}_open": is_open})
    if annotation is int:
        return click.IntRange(**bounds) if bounds else click.INT
    if annotation is float:
        return click.FloatRange(**bounds) if bounds else click.FLOAT
    return click.STRING


def _shown_default(field: FieldInfo) -> str | None:
    value = field.get_default(call_default_factory=True)
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def _knob_option(name: str, field: FieldInfo) -> Callable[[Callable], Callable]:
    """The flag of recipe field ``name``: unset (None, or no values) keeps the recipe file's
    value, so a flag overrides the file, which overrides the default."""
    annotation = field.annotation
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) in (Union, UnionType) and len(args) == 1:
        annotation = args[0]  # Optional[X]: None is the recipe's "unset", never typed
    help_text = field.description or ""
    default = _shown_default(field)
    flags = [flag_name(name), *ALIASES.get(name, ())]
    if annotation is bool:
        dash = flag_name(name)[2:]
        shown = f"--{dash}" if field.default else f"--no-{dash}"
        return click.option(
            f"--{dash}/--no-{dash}", name, default=None, help=f"{help_text} [default: {shown}]"
        )
    kwargs: dict[str, Any] = {"default": None}
    if get_origin(annotation) in (list, tuple):
        (item,) = get_args(annotation)
        kwargs.update(type=_scalar_type(item, []), multiple=True, default=())
        help_text += (
            " Repeatable, or comma-separated." if name in COMMA_SEPARATED else " Repeatable."
        )
    else:
        from cuvee.train.recipe import OLD_METHODS

        also = OLD_METHODS if name == "method" else ()
        kwargs["type"] = _scalar_type(annotation, field.metadata, also)
    if default is not None:
        help_text += f" [default: {default}]"
    return click.option(*flags, name, help=help_text, **kwargs)


def recipe_options(command: Callable) -> Callable:
    """One flag per field of the Recipe, in the recipe's order, help from its description."""
    from cuvee.train.recipe import Recipe

    for name, field in reversed(Recipe.model_fields.items()):
        command = _knob_option(name, field)(command)
    return command


def recipe_overrides(knobs: dict[str, Any]) -> dict[str, Any]:
    """The recipe keys the flags set: unset flags (None, no values) are left out."""
    from cuvee.train.recipe import Recipe

    overrides: dict[str, Any] = {}
    for name in Recipe.model_fields:
        value = knobs.get(name)
        if value is None or value == ():
            continue
        if isinstance(value, tuple):
            value = list(value)
            if name in COMMA_SEPARATED:
                value = [v.strip() for part in value for v in part.split(",") if v.strip()]
        overrides[name] = value
    return overrides


class TrainCommand(click.Command):
    """Lists the recipe knobs apart from the other options in --help."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from cuvee.train.recipe import Recipe

        knobs, others = [], []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx) if isinstance(param, click.Option) else None
            if record is not None:
                (knobs if param.name in Recipe.model_fields else others).append(record)
        with formatter.section("Recipe knobs (a flag overrides the recipe file's value)"):
            formatter.write_dl(knobs)
        with formatter.section("Options"):
            formatter.write_dl(others)


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


@click.command("train", cls=TrainCommand)
@click.argument("recipe", required=False)
@recipe_options
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
    settings: Settings,
    recipe,
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
    """Fine-tune a stored model on your data (LoRA or full), on this CPU by default: instruction
    tuning (--method sft), or preference tuning on pairs or labelled answers (--method dpo, kto,
    orpo; DPO's --loss-type sigmoid, ipo or simpo).

    RECIPE is a YAML file or a shipped recipe name; flags override its knobs. The model is
    registered in the store only when training completes, with its lineage and MODEL_CARD.md.
    Ctrl-C stops after the current step and saves a checkpoint for --resume.

    \b
    Examples:
      cuvee train --base gemma3-270m --data starter --name demo --time-budget 10m
      cuvee train starter-lora-cpu --data mine.jsonl --name mine --author "A. Person"
      cuvee train my-recipe.yaml --lr 1e-4 --no-packing
      cuvee train --base demo --method dpo --data pairs.json --name demo-dpo --time-budget 20m
      cuvee train --resume demo
    """
    from cuvee.train.recipe import build_recipe

    if list_recipes:
        _list_recipes()
        return
    overrides = recipe_overrides(knobs)

    if launcher:
        from cuvee.train.launch import launch_plan

        built = build_recipe(recipe, overrides)
        plan = launch_plan(settings, built, launcher, strategy, gpus=gpus, nodes=nodes)
        if json_output:
            print_json(plan.to_json())
        else:
            click.echo(plan.describe())
        return

    from cuvee.train.loop import find_run
    from cuvee.train.loop import train as run_training

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
        from cuvee.eval.record import check_suites

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
        from cuvee.eval.record import evaluate_and_record

        summary["evaluation"] = evaluate_and_record(
            settings, summary["model"], list(eval_suites), eval_limit, reporter_for(json_output)
        )
    if json_output:
        print_json(summary)
        return
    out = sys.stderr
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
    after = (summary.get("preference") or {}).get("eval") or {}
    before = (summary.get("preference") or {}).get("eval_before") or {}
    shown = [k for k in ("accuracy", "margin", "drift", "kl") if after.get(k) is not None]
    if shown:
        lines.append(
            "held-out "
            + ", ".join(
                f"{k} {after[k]:.3f}"
                + (f" (before {before[k]:.3f})" if before.get(k) is not None else "")
                for k in shown
            )
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
