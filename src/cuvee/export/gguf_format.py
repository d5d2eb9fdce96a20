"""`--format gguf`: the merged model as one GGUF file (f32, f16, or quantized by llama.cpp's
own quantizer), or `--adapter-only`: the LoRA adapter as a GGUF LoRA file that llama.cpp
applies over the base model's GGUF."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np

from cuvee.errors import ConfigError, CuveeError, ModelFileError
from cuvee.export.base import Format
from cuvee.export.source import ExportSource
from cuvee.export.to_gguf import FLOAT_TYPES, architecture_for, write_gguf
from cuvee.native import captured_stderr
from cuvee.progress import Reporter

# llama.cpp's file types (enum llama_ftype) for the quantizations offered.
QUANT_FTYPES = {"q8_0": 7, "q4_k_m": 15}


def write_model(source: ExportSource, out: Path, quant: str | None, reporter: Reporter) -> dict:
    quant = quant or "f16"
    float_type = quant if quant in FLOAT_TYPES else "f32"
    target = out if quant in FLOAT_TYPES else out.with_name(out.name + ".f32")
    reporter.step(f"merging and loading {source.name}")
    model = source.merged
    bos, eos = source.bos_eos
    reporter.step(f"writing GGUF ({float_type})")
    write_gguf(
        target,
        config=source.config,
        tensors=iter(model.state_dict().items()),
        tokenizer_dir=source.files_dir,
        template=source.template,
        bos_token=bos,
        eos_token=eos,
        name=source.name,
        licence=source.licence_id,
        out_type=float_type,
    )
    if target == out:
        return {}
    reporter.step(f"quantizing to {quant} with llama.cpp")
    try:
        quantize(target, out, quant)
    finally:
        target.unlink(missing_ok=True)
    reporter.step("checking the quantized model against the unquantized one")
    check = fidelity(source, out)
    if check["top1_agreement"] < FIDELITY_WARN:
        finer = "f16" if quant == "q8_0" else "q8_0 or f16"
        check["warning"] = (
            f"{quant} changes the most likely next token at "
            f"{1 - check['top1_agreement']:.0%} of the probe's positions: it rounds away much "
            f"of what fine-tuning changed; export {finer} instead"
        )
        reporter.step(f"warning: {check['warning']}")
    return {"fidelity": check}


# Below this share of positions agreeing on the most likely next token, an export warns.
FIDELITY_WARN = 0.9
_PROBE = [
    {"role": "user", "content": "Give three tips for staying healthy."},
    {"role": "assistant", "content": "Eat a balanced diet, sleep enough, and move every day."},
    {"role": "user", "content": "Which one matters most?"},
    {"role": "assistant", "content": "Sleep, because the other two get easier with it."},
]


def fidelity(source: ExportSource, path: Path) -> dict:
    """How often the GGUF's most likely next token equals the unquantized model's, over a
    fixed short conversation in the model's chat template."""
    import torch

    from cuvee.native.logits import gguf_logits
    from cuvee.tokenizer import load_tokenizer

    bos, _ = source.bos_eos
    text = source.template.render(_PROBE, bos_token=bos)
    ids = load_tokenizer(source.files_dir).encode(text, add_special_tokens=False).ids
    with torch.no_grad():
        reference = source.merged(torch.tensor([ids])).logits[0].argmax(-1).tolist()
    got = gguf_logits(path, ids).argmax(-1).tolist()
    same = sum(a == b for a, b in zip(reference, got, strict=True))
    return {"probe_tokens": len(ids), "top1_agreement": round(same / len(ids), 4)}


def quantize(src: Path, dst: Path, quant: str, threads: int | None = None) -> None:
    """llama.cpp's quantizer (through llama-cpp-python's bindings) from a float GGUF."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise CuveeError(
            "quantization needs llama-cpp-python", hint="pip install llama-cpp-python"
        ) from exc
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_FTYPES[quant]
    params.nthread = threads or os.cpu_count() or 1
    with captured_stderr() as log:  # llama.cpp prints every tensor; keep it for errors only
        rc = llama_cpp.llama_model_quantize(
            str(src).encode(), str(dst).encode(), ctypes.byref(params)
        )
    if rc != 0 or not dst.is_file():
        tail = "\n".join("".join(log).strip().splitlines()[-5:])
        raise ModelFileError(
            f"llama.cpp could not quantize {src.name} to {quant} (code {rc})"
            + (f":\n{tail}" if tail else "")
        )


def adapter_refusal(adapter_config: dict) -> tuple[str, str] | None:
    """Why an adapter (its ``adapter_config.json``) cannot become a llama.cpp LoRA file, with
    the fix, or None. The one statement of the rule: the exporter refuses by it and the server
    decides by it whether ``BASE:ADAPTER`` is servable."""
    if adapter_config.get("trainable_token_indices"):
        return (
            "also retrained the embedding rows of its turn tokens, which a llama.cpp LoRA file "
            "cannot carry (the head shares those rows)",
            "export the merged model instead (drop --adapter-only), or train with "
            "train_turn_tokens: false",
        )
    if adapter_config.get("use_rslora") or adapter_config.get("use_dora"):
        return (
            "is an rsLoRA or DoRA adapter, which llama.cpp does not apply",
            "export the merged model instead (drop --adapter-only)",
        )
    return None


def write_adapter(source: ExportSource, out: Path, reporter: Reporter) -> None:
    """The adapter's A and B matrices under the base model's GGUF tensor names, with the
    alpha llama.cpp scales them by. Only what llama.cpp can apply is accepted."""
    import gguf
    from safetensors.numpy import load_file

    adapter_config = _adapter_config(source)
    refusal = adapter_refusal(adapter_config)
    if refusal is not None:
        why, hint = refusal
        raise ConfigError(f"{source.name!r} {why}", hint=hint)
    r, alpha = int(adapter_config["r"]), float(adapter_config["lora_alpha"])
    config = source.config
    arch = architecture_for(config)
    names = gguf.get_tensor_name_map(
        gguf.MODEL_ARCH[arch.gguf_name.upper()], int(config["num_hidden_layers"])
    )
    weights = load_file(str(source.adapter_dir / "adapter_model.safetensors"))
    writer = gguf.GGUFWriter(str(out), arch.gguf_name)
    try:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_name(f"{source.name} (LoRA over {source.base.manifest.name})")
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        count = 0
        for key in sorted(weights):
            if ".lora_A." not in key:
                continue
            module = key.split(".lora_A.")[0]
            hf_name = module.removeprefix("base_model.model.") + ".weight"
            a = weights[key].astype(np.float32)
            b = weights[key.replace(".lora_A.", ".lora_B.")].astype(np.float32)
            # the architecture's own tensor transform applies to the rows of B (e.g. Llama's
            # rotary row order); a scaling-free transform is all A and B can take
            b = arch.tensor(hf_name, b, config)
            if b is None:
                continue
            gguf_name = names.get_name(hf_name, try_suffixes=(".weight",))
            if gguf_name is None:
                raise ModelFileError(f"adapter tensor {key!r} has no GGUF name")
            if a.shape[0] != r:
                raise ModelFileError(f"{key}: rank {a.shape[0]}, the adapter config says {r}")
            writer.add_tensor(f"{gguf_name}.lora_a", a)
            writer.add_tensor(f"{gguf_name}.lora_b", b)
            count += 1
        if count == 0:
            raise ModelFileError(f"{source.adapter_dir}: no LoRA matrices found")
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def _adapter_config(source: ExportSource) -> dict:
    import json

    path = source.adapter_dir / "adapter_config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: unreadable adapter config: {exc}") from exc


def _write(source: ExportSource, out: Path, quant, adapter_only: bool, reporter) -> dict:
    if adapter_only:
        if quant not in (None, "f16", "f32"):
            raise ConfigError("an adapter is exported unquantized", hint="drop --quant")
        write_adapter(source, out, reporter)
        return {}
    return write_model(source, out, quant, reporter)


FORMAT = Format(
    name="gguf",
    description="one GGUF file for llama.cpp, Ollama, LM Studio (chat template embedded)",
    quants=("f16", "f32", "q8_0", "q4_k_m"),
    suffix=".gguf",
    write=_write,
    adapter_only=True,
)
