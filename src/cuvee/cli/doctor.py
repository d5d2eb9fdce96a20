"""`cuvee doctor`: this machine, the builds cuvee runs on and each problem with its fix; the
output to paste into a bug report."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from cuvee.cli.output import print_json

if TYPE_CHECKING:
    from cuvee.config import Settings

_MARKS = {"ok": "ok  ", "warn": "WARN", "error": "FAIL"}


@click.command("doctor")
@click.option("--json", "json_output", is_flag=True, help="Print one JSON object.")
@click.option(
    "--reprobe",
    is_flag=True,
    help="Run the engine probe again instead of reading its cached verdict.",
)
@click.option("-v", "--verbose", is_flag=True, help="Show each check's details too.")
@click.pass_obj
def doctor(settings: Settings, json_output: bool, reprobe: bool, verbose: bool) -> None:
    """Check this machine and install: CPU, memory, disk, torch, llama.cpp, the engine probe
    (llama.cpp tried in a child process), dependencies, the embedding and base models.

    Exits 1 when a check failed. Paste the output into bug reports.

    Example: cuvee doctor --json > doctor.json
    """
    from cuvee.doctor import report, run_checks

    findings = run_checks(settings, reprobe=reprobe)
    result = report(findings)
    if json_output:
        print_json(result)
    else:
        for f in findings:
            click.echo(f"{_MARKS[f.status]}  {f.name:<16} {f.summary}")
            if f.fix:
                click.echo(f"      {'':<16} fix: {f.fix}")
            if verbose:
                for key, value in f.details.items():
                    click.echo(f"      {'':<16} {key}: {value}")
        click.echo(
            f"{result['problems']} problem(s), {result['errors']} error(s)"
            if result["problems"]
            else "no problems found"
        )
    if result["errors"]:
        sys.exit(1)
