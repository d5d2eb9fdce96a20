"""`cuvee export`: a stored model in the formats other runtimes read."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from cuvee.cli.output import human_size, print_json, reporter_for
from cuvee.export.formats import FORMATS

if TYPE_CHECKING:
    from cuvee.config import Settings


def _quants() -> list[str]:
    """Every quantization some format takes, in the registry's order."""
    return list(dict.fromkeys(q for fmt in FORMATS.values() for q in fmt.quants))


def _quant_help() -> str:
    per_format = [
        f"{fmt.name}: {fmt.quants[0]} (default), {', '.join(fmt.quants[1:])}"
        if len(fmt.quants) > 1
        else f"{fmt.name}: {fmt.quants[0]}"
        for fmt in FORMATS.values()
        if fmt.quants
    ]
    return "Weights' quantization; " + "; ".join(per_format) + "."


def _formats_help() -> str:
    return "\n".join(f"  {fmt.name:<10} {fmt.description}" for fmt in FORMATS.values())


@click.command(
    help="Export model NAME: merged weights (or the adapter alone) as "
    + ", ".join(FORMATS)
    + ", with the chat template the model was trained with.",
    epilog="\b\nFormats:\n"
    + _formats_help()
    + """

Examples:

\b
  cuvee export demo --format gguf --quant q4_k_m     # llama.cpp, LM Studio, Ollama
  cuvee export demo --format gguf --adapter-only     # a LoRA GGUF over the base's GGUF
  cuvee export demo --format modelfile -o demo-ollama && ollama create demo -f demo-ollama/Modelfile
  cuvee export demo --format hf -o ./demo-hf         # transformers, vLLM, TGI
  cuvee export demo --format onnx                    # ONNX Runtime

Without -o the export goes to $CUVEE_HOME/exports/NAME/; every export is recorded in the
model's manifest (cuvee models show NAME).""",
)
@click.argument("name")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(list(FORMATS)),
    required=True,
    help="Target format (see Formats below).",
)
@click.option("--quant", type=click.Choice(_quants()), default=None, help=_quant_help())
@click.option(
    "--adapter-only",
    is_flag=True,
    help="Export the LoRA adapter alone, for "
    + ", ".join(f.name for f in FORMATS.values() if f.adapter_only)
    + " (gguf: a llama.cpp LoRA file; hf: the PEFT directory).",
)
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), default=None, help="Where to write."
)
@click.option("--force", is_flag=True, help="Replace an existing output.")
@click.option("--json", "json_output", is_flag=True, help="Print the export record as JSON.")
@click.pass_obj
def export(settings: Settings, name, fmt, quant, adapter_only, output, force, json_output) -> None:
    # the help is generated from the format registry (see the decorator)
    from cuvee.export.formats import export as run_export
    from cuvee.store import ModelStore

    entry = run_export(
        settings,
        ModelStore(settings.models_dir),
        name,
        fmt,
        quant=quant,
        adapter_only=adapter_only,
        out=output,
        force=force,
        reporter=reporter_for(json_output),
    )
    if json_output:
        print_json(entry)
        return
    what = fmt + (f" {entry['quantization']}" if entry.get("quantization") else "")
    what += " adapter" if adapter_only else ""
    click.echo(f"exported {name} ({what}, {human_size(entry['size'])}) to {entry['path']}")
