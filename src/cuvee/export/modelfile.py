"""`--format modelfile`: a directory Ollama builds a model from (`ollama create NAME -f
Modelfile`): the GGUF and a Modelfile whose TEMPLATE is the family's chat template in Ollama's
Go template language and whose stop parameters are the template's end-of-turn strings."""

from __future__ import annotations

import json
from pathlib import Path

from cuvee.errors import ConfigError
from cuvee.export.base import Format
from cuvee.export.gguf_format import write_model
from cuvee.export.source import ExportSource
from cuvee.progress import Reporter


def modelfile_text(source: ExportSource, gguf_name: str) -> str:
    template = source.template
    if not template.ollama:
        raise ConfigError(f"the {template.family} chat template has no Ollama form yet")
    lines = [
        f"# {source.name}, exported by cuvee. Build it with:  ollama create {source.name} -f "
        "Modelfile",
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{template.ollama}"""',
    ]
    lines += [f"PARAMETER stop {json.dumps(stop)}" for stop in template.stop]
    licence = source.model.manifest.licence
    lines.append(f'LICENSE """{licence.id}: {licence.name or licence.id}"""')
    return "\n".join(lines) + "\n"


def _write(source: ExportSource, out: Path, quant, adapter_only: bool, reporter: Reporter) -> dict:
    out.mkdir(parents=True)
    gguf_name = f"{source.name}-{quant}.gguf"
    extra = write_model(source, out / gguf_name, quant, reporter)
    (out / "Modelfile").write_text(modelfile_text(source, gguf_name), encoding="utf-8")
    return extra


FORMAT = Format(
    name="modelfile",
    description="an Ollama Modelfile with its GGUF (TEMPLATE and stop from the chat template)",
    # q8_0 first: q4_k_m can round a LoRA fine-tune's small changes away (export checks this)
    quants=("q8_0", "q4_k_m", "f16"),
    suffix="",
    write=_write,
)
