"""The `cuvee` command: a group whose subcommands are imported only when invoked, so `--help` and
light commands never pay for torch or transformers."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import click

from cuvee import __version__

# name -> (module, attribute, one-line help shown by `cuvee --help` without importing the module)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "models": ("cuvee.cli.models", "models", "Pull, add, list, show and remove models."),
    "data": (
        "cuvee.cli.data",
        "data",
        "Check and augment instruction data, and write the bundled starter set.",
    ),
    "train": (
        "cuvee.cli.train",
        "train",
        "Instruction-tune a base model on your data (LoRA or full).",
    ),
    "export": (
        "cuvee.cli.export",
        "export",
        "Export a model to GGUF (quantized), HF, ONNX or an Ollama Modelfile.",
    ),
    "run": ("cuvee.cli.run", "run", "Generate a reply to one prompt (streamed)."),
    "chat": ("cuvee.cli.run", "chat", "Talk with a model interactively."),
    "serve": (
        "cuvee.cli.serve",
        "serve",
        "Serve models through an OpenAI-compatible HTTP API.",
    ),
    "docs": (
        "cuvee.cli.docs",
        "docs",
        "Index private documents into collections for grounded answers.",
    ),
    "ask": (
        "cuvee.cli.ask",
        "ask",
        "Answer a question from a document collection, with checked citations.",
    ),
    "eval": (
        "cuvee.cli.eval",
        "eval",
        "Evaluate models: instruction following, tasks, pairwise, grounded answers.",
    ),
    "quickstart": (
        "cuvee.cli.quickstart",
        "quickstart",
        "The whole recipe: pull, fine-tune, evaluate, export, index and serve.",
    ),
    "keys": ("cuvee.cli.keys", "keys", "Create, list and revoke API keys for the server."),
    "doctor": (
        "cuvee.cli.doctor",
        "doctor",
        "Check this machine and install (CPU, builds, engine probe); paste into bug reports.",
    ),
    "config": (
        "cuvee.cli.config",
        "config",
        "Show the resolved settings and where they come from.",
    ),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Example: cuvee quickstart   (pull, fine-tune, evaluate, export, index, serve)",
)
@click.option(
    "--home",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where cuvee keeps models and indexes [env CUVEE_HOME; default ~/.cuvee].",
)
@click.version_option(__version__, prog_name="cuvee")
@click.pass_context
def cli(ctx: click.Context, home: Path | None) -> None:
    """Own your LLM: instruction-tune an open base model on your data, offline, on a CPU."""
    from cuvee.config import load_settings

    ctx.obj = load_settings({"home": home})


def main(argv: list[str] | None = None) -> None:
    from cuvee.errors import CuveeError

    try:
        cli.main(args=argv, prog_name="cuvee", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except CuveeError as exc:
        click.echo(f"error: {exc.message}", err=True)
        if exc.hint:
            click.echo(f"  hint: {exc.hint}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
