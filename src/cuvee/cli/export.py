"""`cuvee export`: a stored model in the formats other runtimes read."""

from __future__ import annotations

from pathlib import Path

import click

from cuvee.cli.output import human_size, print_json, reporter_for

_FORMATS = ["gguf", "hf", "onnx", "modelfile"]
_QUANTS = ["f16", "f32", "q8_0", "q4_k_m"]


@click.command(
    epilog="""Examples:

\b
  cuvee export demo --format gguf --quant q4_k_m     # llama.cpp, LM Studio, Ollama
  cuvee export demo --format gguf --adapter-only     # a LoRA GGUF over the base's GGUF
  cuvee export demo --format modelfile -o demo-ollama && ollama create demo -f demo-ollama/Modelfile
  cuvee export demo --format hf -o ./demo-hf         # transformers, vLLM, TGI
  cuvee export demo --format onnx                    # ONNX Runtime

Without -o the export goes to $CUVEE_HOME/exports/NAME/; every export is recorded in the
model's manifest (cuvee models show NAME)."""
)
@click.argument("name")
@click.option("--format", "fmt", type=click.Choice(_FORMATS), required=True, help="Target format.")
@click.option(
    "--quant",
    type=click.Choice(_QUANTS),
    default=None,
    help="GGUF weights: f16 (default for gguf), f32, q8_0, q4_k_m; modelfile defaults to q8_0.",
)
@click.option(
    "--adapter-only",
    is_flag=True,
    help="Export the LoRA adapter alone (gguf: a llama.cpp LoRA file; hf: the PEFT directory).",
)
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), default=None, help="Where to write."
)
@click.option("--force", is_flag=True, help="Replace an existing output.")
@click.option("--json", "json_output", is_flag=True, help="Print the export record as JSON.")
@click.pass_obj
def export(settings, name, fmt, quant, adapter_only, output, force, json_output) -> None:
    """Export model NAME: merged weights (or the adapter alone) as GGUF, HF, ONNX or an Ollama
    Modelfile, with the chat template the model was trained with."""
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
