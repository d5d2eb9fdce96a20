"""`cuvee eval`: put the same suites to several models and compare the figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from cuvee.cli.output import reporter_for

if TYPE_CHECKING:
    from cuvee.config import Settings


def _suites() -> list:
    from cuvee.eval.suites import SUITES, suite_names

    return [SUITES[name] for name in suite_names()]


def _epilog() -> str:
    """The suites from the registry, then how MODEL and --suite are read."""
    import textwrap

    rows = []
    for suite in _suites():
        text = suite.description
        if getattr(suite, "compares", False):
            text += " (by --judge, against the first MODEL)"
        rows.append(
            textwrap.fill(
                text, width=94, initial_indent=f"  {suite.name:<13} ", subsequent_indent=" " * 16
            )
        )
    return (
        "\b\nSuites:\n"
        + "\n".join(rows)
        + """

MODEL is a stored model name, a .gguf file, or an OpenAI-compatible endpoint written
openai:BASE_URL#MODEL_ID (key from CUVEE_EVAL_API_KEY or OPENAI_API_KEY if the endpoint needs
one). --suite NAME uses the suite's packaged items; --suite FILE picks the suite from the file's
records (an official IFEval input_data.jsonl is read as is); NAME=FILE names it. Decoding is
greedy with a fixed seed; answers are cached in $CUVEE_HOME/eval/cache by model hash, suite hash
and settings, so a re-run is instant.

\b
Examples:
  cuvee eval gemma3-270m demo --suite instructions --suite tasks --report report.html
  cuvee eval demo --suite input_data.jsonl --limit 50 --json
  cuvee eval gemma3-270m demo --suite pairwise --judge openai:http://127.0.0.1:8080/v1#judge"""
    )


@click.command(
    help="Evaluate MODEL(s) on suites ("
    + ", ".join(s.name for s in _suites())
    + ") and compare the figures.",
    epilog=_epilog(),
)
@click.argument("models", nargs=-1, required=True)
@click.option(
    "--suite",
    "suites",
    multiple=True,
    default=("instructions",),
    show_default=True,
    help=f"Suite name ({', '.join(s.name for s in _suites())}), a suite FILE, or NAME=FILE "
    "(repeatable).",
)
@click.option("--limit", type=int, default=None, help="Only the first N items of each suite.")
@click.option(
    "--judge",
    default=None,
    help="Judge model for "
    + ", ".join(s.name for s in _suites() if getattr(s, "compares", False))
    + ": openai:BASE_URL#MODEL_ID.",
)
@click.option(
    "--max-tokens", type=int, default=None, help="Generation limit (default: each suite's own)."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed, recorded.")
@click.option("--no-cache", is_flag=True, help="Generate again instead of reading the cache.")
@click.option("--json", "json_output", is_flag=True, help="Print one JSON object as the last line.")
@click.option(
    "--report",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write a self-contained HTML report (tables, bars, loss curves) to this file.",
)
@click.pass_obj
def eval(  # the command is called eval; it shadows the builtin only here
    settings: Settings,
    models,
    suites,
    limit,
    judge,
    max_tokens,
    seed,
    no_cache,
    json_output,
    report,
) -> None:
    # the help is generated from the suite registry (see the decorator)
    from cuvee.eval.runner import run_evaluation

    result = run_evaluation(
        settings,
        list(models),
        list(suites),
        limit=limit,
        judge=judge,
        max_tokens=max_tokens,
        seed=seed,
        use_cache=not no_cache,
        reporter=reporter_for(json_output),
    )
    _warn_unscored(result.document)
    if report is not None:
        from cuvee.eval.report import write_report

        path = write_report(result, report)
        click.echo(f"report written to {path}", err=True)
    if json_output:
        click.echo(json.dumps(result.document, ensure_ascii=False, default=str))
    else:
        _print_tables(result.document)


def _warn_unscored(document: dict) -> None:
    """Say on stderr whatever could not be scored (checker errors, unparseable judge replies):
    these count against the model in the figures and must not pass unnoticed."""
    for model, by_suite in document["results"].items():
        for suite, entry in by_suite.items():
            for key, value in entry["counts"].items():
                if key.endswith("errors") and value:
                    click.echo(
                        f"warning: {model} · {suite}: {value} {key.replace('_', ' ')}", err=True
                    )


def _print_tables(document: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    models = list(document["models"])
    for label, info in document["suites"].items():
        title = f"{label} (v{info['version']}, {info['items']} items)"
        if info.get("reference"):
            title += f", against {info['reference']}"
        table = Table(title=title, title_justify="left")
        table.add_column("metric")
        for model in models:
            table.add_column(model, justify="right")
        entries = [document["results"].get(m, {}).get(label, {}) for m in models]
        metrics = list(dict.fromkeys(k for e in entries for k in e.get("metrics", {})))
        for metric in metrics:
            cells = [e.get("metrics", {}).get(metric) for e in entries]
            table.add_row(metric, *("-" if v is None else f"{v:.3f}" for v in cells))
        if metrics:
            console.print(table)
    cached = document["generated"] == 0
    console.print(
        "all answers came from the cache"
        if cached
        else f"{document['generated']} answers generated",
        style="dim",
    )
