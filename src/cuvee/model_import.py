"""Bringing models into the store: base models from the catalog, and local HF directories or GGUF
files. GGUF weights are converted once to safetensors so training loads them in seconds; the GGUF
is kept for inference."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from cuvee import catalog
from cuvee.errors import ModelFileError, StoreError
from cuvee.licences import resolve_licence
from cuvee.progress import Reporter
from cuvee.store import (
    Manifest,
    ModelStore,
    Source,
    StoredModel,
    describe_files,
    utc_now,
    write_manifest,
)

# Weight files a Hugging Face directory must have; pickled .bin weights are not accepted.
_HF_WEIGHTS = ("*.safetensors",)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


@dataclass(frozen=True)
class GGUFInfo:
    architecture: str
    name: str | None
    tensor_count: int
    file_type: int | None


def inspect_gguf(path: Path) -> GGUFInfo:
    """Read and check a GGUF's header and tensor table; a corrupt or truncated file raises
    :class:`ModelFileError` naming the file and the problem."""
    from gguf import GGUFReader

    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    size = path.stat().st_size
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise ModelFileError(
            f"{path}: not a GGUF file (its first bytes are {magic!r}, not b'GGUF')"
        )
    try:
        reader = GGUFReader(path)
    except (ValueError, IndexError, OSError) as exc:
        raise ModelFileError(
            f"{path}: corrupt or truncated GGUF ({size} bytes): {exc}",
            hint="copy or download the file again and compare its sha256",
        ) from exc
    for tensor in reader.tensors:
        end = int(tensor.data_offset) + int(tensor.n_bytes)
        if end > size:
            raise ModelFileError(
                f"{path}: truncated GGUF: tensor {tensor.name!r} ends at byte {end}, "
                f"the file has {size}",
                hint="copy or download the file again and compare its sha256",
            )

    def field(key: str):
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    arch = field("general.architecture")
    if not arch:
        raise ModelFileError(f"{path}: GGUF has no general.architecture field")
    return GGUFInfo(
        architecture=str(arch),
        name=field("general.name"),
        tensor_count=len(reader.tensors),
        file_type=field("general.file_type"),
    )


def supported_gguf_architectures() -> list[str]:
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    return sorted(k for k in GGUF_CONFIG_MAPPING if k not in {"general", "tokenizer"})


def convert_gguf_to_hf(gguf_path: Path, out_dir: Path, reporter: Reporter) -> None:
    """De-quantize a GGUF into an fp32 safetensors checkpoint plus tokenizer in ``out_dir``."""
    info = inspect_gguf(gguf_path)
    supported = supported_gguf_architectures()
    if info.architecture not in supported:
        raise ModelFileError(
            f"{gguf_path}: architecture {info.architecture!r} cannot be converted for training",
            hint=f"supported GGUF architectures: {', '.join(supported)}",
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    reporter.step("reading the tokenizer from the GGUF")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    reporter.step("de-quantizing the GGUF weights (about a minute for 270M parameters on 2 cores)")
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    # A model loaded from GGUF refuses save_pretrained; one rebuilt from its config and state
    # dict is an ordinary checkpoint.
    model = type(gguf_model)(gguf_model.config)
    model.load_state_dict(gguf_model.state_dict())
    del gguf_model
    # The weights are plain fp32 now; a GGUF quantization_config left in config.json would make
    # later loads go through transformers' GGUF quantizer.
    drop_gguf_quantization(model.config)
    reporter.step("writing safetensors")
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def drop_gguf_quantization(config) -> None:
    """Remove a GGUF ``quantization_config`` from a transformers config, in place."""
    qc = getattr(config, "quantization_config", None)
    method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
    if qc is not None and str(method).lower().endswith("gguf"):
        del config.quantization_config


def safetensors_parameters(directory: Path) -> int:
    """Parameter count from safetensors headers alone, without loading a tensor."""
    from safetensors import safe_open

    total = 0
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), framework="numpy") as fh:
            for key in fh.keys():  # noqa: SIM118 - safe_open has no __iter__
                shape = fh.get_slice(key).get_shape()
                count = 1
                for dim in shape:
                    count *= dim
                total += count
    return total


def _read_config(directory: Path) -> dict:
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise ModelFileError(
            f"{directory}: not a Hugging Face model directory (no config.json)",
            hint="give a directory saved with save_pretrained, or a .gguf file",
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{config_path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
    if not isinstance(config, dict) or "model_type" not in config:
        raise ModelFileError(f'{config_path}: field "model_type" is missing')
    return config


def _hf_architecture(config: dict) -> str:
    model_type = str(config["model_type"])
    # gemma3_text is the text-only Gemma 3; its GGUF and template family are gemma3's.
    return model_type.removesuffix("_text")


def pull(store: ModelStore, name: str, reporter: Reporter, *, force: bool = False) -> StoredModel:
    """Put a catalog base model into the store; does nothing if it is already there."""
    entry = catalog.get_entry(name)
    if store.exists(name) and not force:
        reporter.step(f"{name} is already in the store")
        return store.get(name)
    with store.stage(name, replace=force) as staging:
        obtained = entry.obtain(staging, reporter)
        convert_gguf_to_hf(obtained.path, staging, reporter)
        config = _read_config(staging)
        manifest = _manifest(
            store,
            staging,
            reporter,
            name=name,
            kind="base",
            architecture=entry.architecture,
            model_type=config.get("model_type"),
            source=Source(
                type="catalog",
                package=obtained.package,
                package_version=obtained.package_version,
                original_file=obtained.path.name,
                original_sha256=obtained.sha256,
                upstream=entry.upstream,
            ),
            licence_id=entry.licence,
            chat_template=entry.chat_template,
            description=entry.description,
        )
        write_manifest(staging, manifest)
    return store.get(name)


def add(
    store: ModelStore,
    path: Path,
    name: str,
    reporter: Reporter,
    *,
    licence: str | None = None,
    chat_template: str | None = None,
    kind: str = "base",
    parent: str | None = None,
) -> StoredModel:
    """Validate a local HF directory or GGUF file and record it in the store (copied)."""
    from cuvee.chat_template import get_template

    path = Path(path).expanduser()
    if not path.exists():
        raise ModelFileError(f"{path}: no such file or directory")
    if chat_template:
        get_template(chat_template)  # fail before copying gigabytes
    if parent is not None and not store.exists(parent):
        raise StoreError(f"parent model {parent!r} is not in the store")
    with store.stage(name) as staging:
        if path.is_file():
            if path.suffix != ".gguf":
                raise ModelFileError(
                    f"{path}: expected a .gguf file or a Hugging Face model directory"
                )
            info = inspect_gguf(path)
            target = staging / path.name
            with reporter.bytes(f"copying {path.name}", path.stat().st_size) as advance:
                _copy_with_progress(path, target, advance)
            convert_gguf_to_hf(target, staging, reporter)
            architecture = info.architecture
            source = Source(type="local", path=str(path.resolve()), original_file=path.name)
        else:
            config = _read_config(path)
            weights = sorted(p for pattern in _HF_WEIGHTS for p in path.glob(pattern))
            if not weights:
                raise ModelFileError(
                    f"{path}: no *.safetensors weights",
                    hint="save the model with save_pretrained(..., safe_serialization=True)",
                )
            if not any((path / t).is_file() for t in _TOKENIZER_FILES):
                raise ModelFileError(
                    f"{path}: no tokenizer (tokenizer.json or tokenizer.model)",
                    hint="save the tokenizer into the same directory with save_pretrained",
                )
            files = [
                p for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith(".")
            ]
            total = sum(p.stat().st_size for p in files)
            with reporter.bytes(f"copying {path.name}", total) as advance:
                for src in files:
                    _copy_with_progress(src, staging / src.name, advance)
            architecture = _hf_architecture(config)
            source = Source(type="local", path=str(path.resolve()))
        config = _read_config(staging)
        manifest = _manifest(
            store,
            staging,
            reporter,
            name=name,
            kind=kind,
            architecture=architecture,
            model_type=config.get("model_type"),
            source=source,
            licence_id=licence,
            chat_template=chat_template or catalog.template_for_architecture(architecture),
            parent=parent,
        )
        write_manifest(staging, manifest)
    return store.get(name)


def _manifest(
    store: ModelStore,
    staging: Path,
    reporter: Reporter,
    *,
    name: str,
    kind: str,
    architecture: str,
    model_type: str | None,
    source: Source,
    licence_id: str | None,
    chat_template: str,
    parent: str | None = None,
    description: str = "",
) -> Manifest:
    total = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
    with reporter.bytes("hashing files", total) as advance:
        files = describe_files(staging, advance)
    return Manifest(
        name=name,
        kind=kind,
        architecture=architecture,
        model_type=model_type,
        parameters=safetensors_parameters(staging),
        files=files,
        source=source,
        licence=resolve_licence(licence_id),
        chat_template=chat_template,
        parent=parent,
        created_at=utc_now(),
        path=str(store.model_dir(name)),
        description=description,
    )


def _copy_with_progress(src: Path, dst: Path, advance) -> None:
    with src.open("rb") as fin, dst.open("wb") as fout:
        while block := fin.read(1 << 20):
            fout.write(block)
            advance(len(block))
    shutil.copystat(src, dst)
