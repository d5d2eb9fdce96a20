"""`cuvee quickstart`: pull, fine-tune, evaluate, export, index and serve, in one command."""

from __future__ import annotations

import click


@click.command(
    epilog="""Examples:

\b
  cuvee quickstart                         # about 10 minutes of training, then serves on :8000
  cuvee quickstart --time-budget 30m --name mine
  cuvee quickstart --no-serve              # stop after indexing (for scripts)

Every step is skipped when its result is already there: running it again goes straight to
serving."""
)
@click.option(
    "--time-budget", default="10m", show_default=True, help="Training time, e.g. 10m, 1h."
)
@click.option("--name", default="quickstart", show_default=True, help="Name of the fine-tune.")
@click.option("--base", default=None, help="Base model [the default_base setting].")
@click.option(
    "--eval-limit",
    type=click.IntRange(1),
    default=20,
    show_default=True,
    help="Instruction-following prompts in the base-vs-tuned comparison.",
)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--no-serve", is_flag=True, help="Do everything but start the server.")
@click.pass_obj
def quickstart(settings, time_budget, name, base, eval_limit, port, no_serve) -> None:
    """The whole recipe on this machine: pull the base model, fine-tune it on the bundled
    starter set within --time-budget, compare base and fine-tune, export to GGUF, index the
    bundled documents, and serve both models through the OpenAI-compatible API."""
    from cuvee.quickstart import Plan, run
    from cuvee.train.recipe import parse_duration

    try:
        parse_duration(time_budget)  # a bad budget fails before anything runs
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--time-budget") from exc
    run(
        Plan(
            settings=settings,
            base=base or settings.default_base,
            name=name,
            time_budget=time_budget,
            eval_limit=eval_limit,
            port=port,
            serve=not no_serve,
        )
    )
