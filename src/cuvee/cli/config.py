"""`cuvee config`: the resolved settings, so a user can see which value won and why."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from cuvee.cli.output import print_json

if TYPE_CHECKING:
    from cuvee.config import Settings


@click.command("config")
@click.option("--json", "json_output", is_flag=True, help="Print one JSON object.")
@click.pass_obj
def config(settings: Settings, json_output: bool) -> None:
    """Show every setting, its value, env var and the config file in use.

    Precedence: flag > environment variable > config file > default.

    Example: CUVEE_HOME=/data/cuvee cuvee config --json
    """
    from dataclasses import asdict

    from cuvee.config import describe_settings

    values = {k: str(v) if v is not None else None for k, v in asdict(settings).items()}
    if json_output:
        print_json(
            {
                "settings": values,
                "config_file": str(settings.config_file),
                "config_file_exists": settings.config_file.is_file(),
            }
        )
        return
    click.echo(
        f"config file: {settings.config_file}"
        + ("" if settings.config_file.is_file() else " (absent)")
    )
    for row in describe_settings():
        click.echo(f"{row['name']:<20} {values[row['name']]!s:<30} [{row['env']}] {row['help']}")
