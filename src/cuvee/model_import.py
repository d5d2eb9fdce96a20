"""Bringing models into the store: base models from the catalog, and local HF directories or GGUF
files. GGUF weights are converted once to safetensors so training loads them in seconds; the GGUF
is kept for inference. A conversion is registered only once its weights are shown to compute what
the GGUF computes in llama.cpp (:func:`check_conversion`)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from importlib import metadata
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


# The known-answer check of a conversion: the converted checkpoint (transformers, fp32) and the
# GGUF it came from (llama.cpp, on the GGUF's own weights) read the same fixed text, token ids fed
# to both alike. A faithful conversion differs from llama.cpp only by llama.cpp's rounding (its
# quantized dot products, f16 cache): on gemma3-270m's Q4_K_M both pick the same next token at
# 94% of the positions and the mean NLLs differ by 0.013 nats; tiny exported models give 0.94 to
# 1.00. Broken conversions measured on gemma3-270m: one layer's MLP zeroed 52% (NLL +0.86), two
# layers swapped 14%, query rows permuted 19%, norms off by one 0%.
CHECK_MIN_TOP1_AGREEMENT = 0.8
CHECK_MAX_NLL_GAP = 0.2  # nats per token
CHECK_MAX_TOKENS = 256
CHECK_PROBE = (
    "The river rises in the hills above the town and runs south for forty miles before it "
    "reaches the sea. In spring the melting snow swells it until it floods the lower fields, "
    "and the farmers move their sheep to higher ground. By late summer it is shallow enough to "
    "cross on foot. A stone bridge with seven arches was built over it in 1820; the old ferry "
    "still carries walkers on Sundays. Children learn to swim in the pool below the mill, where "
    "the water is deep and slow. Every year the town holds a boat race on the first Saturday of "
    "June, and the winners are given a silver cup and a basket of bread, cheese and apples."
)
# The libraries whose versions decide what a conversion computes.
CHECK_LIBRARIES = ("transformers", "gguf", "llama-cpp-python", "torch")


class ConversionCheckError(ModelFileError):
    """A GGUF's converted weights do not compute what the GGUF computes in llama.cpp."""


def conversion_versions() -> dict[str, str]:
    out = {}
    for dist in CHECK_LIBRARIES:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _probe_ids(model_dir: Path, config: dict) -> list[int]:
    from cuvee.tokenizer import load_tokenizer

    ids = load_tokenizer(model_dir).encode(CHECK_PROBE).ids
    bos = config.get("bos_token_id")
    if isinstance(bos, int) and (not ids or ids[0] != bos):
        ids = [bos, *ids]
    limit = min(CHECK_MAX_TOKENS, int(config.get("max_position_embeddings") or CHECK_MAX_TOKENS))
    return ids[:limit]


def _mean_nll(logits, ids: list[int]) -> float:
    """Mean negative log-likelihood (nats) of ``ids[1:]`` given the logits before each."""
    import torch

    rows = torch.as_tensor(logits[:-1], dtype=torch.float32)
    log_probs = torch.log_softmax(rows, dim=-1)
    picked = log_probs[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    return float(-picked.double().mean())


def check_conversion(gguf_path: Path, model_dir: Path, reporter: Reporter) -> dict:
    """Compare the converted checkpoint in ``model_dir`` with ``gguf_path`` run by llama.cpp on
    :data:`CHECK_PROBE`; returns the figures, or raises :class:`ConversionCheckError` when the
    top-1 agreement or the NLL gap is out of bounds."""
    import torch
    from transformers import AutoModelForCausalLM

    from cuvee.native.logits import gguf_logits

    reporter.step("checking the converted weights against the GGUF in llama.cpp")
    versions = conversion_versions()
    ids = _probe_ids(model_dir, _read_config(model_dir))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        converted = model(torch.tensor([ids])).logits[0].numpy()
    del model
    try:
        reference = gguf_logits(gguf_path, ids)
    except ModelFileError as exc:
        raise ConversionCheckError(
            f"{gguf_path.name}: the conversion check could not run the GGUF: {exc.message}",
            hint="nothing was registered; `--no-check` registers the conversion unchecked",
        ) from exc
    agreement = float((converted.argmax(-1) == reference.argmax(-1)).mean())
    nll_converted, nll_gguf = _mean_nll(converted, ids), _mean_nll(reference, ids)
    gap = abs(nll_converted - nll_gguf)
    figures = {
        "probe_tokens": len(ids),
        "top1_agreement": round(agreement, 4),
        "nll_converted": round(nll_converted, 4),
        "nll_gguf": round(nll_gguf, 4),
        "min_top1_agreement": CHECK_MIN_TOP1_AGREEMENT,
        "max_nll_gap": CHECK_MAX_NLL_GAP,
        "versions": versions,
    }
    if agreement < CHECK_MIN_TOP1_AGREEMENT or gap > CHECK_MAX_NLL_GAP:
        libraries = ", ".join(f"{k} {v}" for k, v in versions.items())
        raise ConversionCheckError(
            f"{gguf_path.name}: the converted weights do not compute what the GGUF computes. "
            f"On a fixed {len(ids)}-token probe text, the converted model and llama.cpp pick the "
            f"same next token at {agreement:.1%} of positions (at least "
            f"{CHECK_MIN_TOP1_AGREEMENT:.0%} required), and their mean negative log-likelihoods "
            f"are {nll_converted:.3f} and {nll_gguf:.3f} nats (gap {gap:.3f}, at most "
            f"{CHECK_MAX_NLL_GAP} allowed). Libraries: {libraries}",
            hint="nothing was registered. transformers' GGUF loader mis-read this file: try "
            "another transformers version, or convert the model from its original safetensors "
            "and `cuvee models add` that directory",
        )
    return figures


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


def pull(
    store: ModelStore, name: str, reporter: Reporter, *, force: bool = False, check: bool = True
) -> StoredModel:
    """Put a catalog base model into the store; does nothing if it is already there. With
    ``check`` the conversion must pass :func:`check_conversion` first."""
    entry = catalog.get_entry(name)
    if store.exists(name) and not force:
        reporter.step(f"{name} is already in the store")
        return store.get(name)
    with store.stage(name, replace=force) as staging:
        obtained = entry.obtain(staging, reporter)
        convert_gguf_to_hf(obtained.path, staging, reporter)
        conversion_check = _checked(obtained.path, staging, reporter, check)
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
            conversion_check=conversion_check,
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
    check: bool = True,
) -> StoredModel:
    """Validate a local HF directory or GGUF file and record it in the store (copied). A GGUF's
    conversion must pass :func:`check_conversion` first unless ``check`` is false."""
    from cuvee.chat_template import get_template

    path = Path(path).expanduser()
    if not path.exists():
        raise ModelFileError(f"{path}: no such file or directory")
    if chat_template:
        get_template(chat_template)  # fail before copying gigabytes
    if parent is not None and not store.exists(parent):
        raise StoreError(f"parent model {parent!r} is not in the store")
    conversion_check = None
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
            conversion_check = _checked(target, staging, reporter, check)
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
            conversion_check=conversion_check,
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
    conversion_check: dict | None = None,
) -> Manifest:
    total = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
    with reporter.bytes("hashing files", total) as advance:
        files = describe_files(staging, advance)
    # Only GGUF conversions carry the record; a copied HF directory has nothing to check.
    extra = {} if conversion_check is None else {"conversion_check": conversion_check}
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
        **extra,
    )


def _checked(gguf_path: Path, staging: Path, reporter: Reporter, check: bool) -> dict:
    """The manifest's record of the conversion check: its figures, or that it was skipped."""
    if not check:
        reporter.step("conversion check skipped (--no-check)")
        return {"skipped": True, "versions": conversion_versions()}
    return check_conversion(gguf_path, staging, reporter)


def _copy_with_progress(src: Path, dst: Path, advance) -> None:
    with src.open("rb") as fin, dst.open("wb") as fout:
        while block := fin.read(1 << 20):
            fout.write(block)
            advance(len(block))
    shutil.copystat(src, dst)
