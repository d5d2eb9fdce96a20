"""The export formats, one registry entry each, and the one way they are run and recorded.

Every export is written under a temporary name beside its destination and renamed only when
complete, then recorded in the model's manifest (format, quantization, path, sha256, size)."""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cuvee.errors import ConfigError, CuveeError
from cuvee.export.base import Format
from cuvee.export.source import ExportSource
from cuvee.progress import Reporter
from cuvee.store import (
    ModelStore,
    process_alive,
    sha256_file,
    utc_now,
    write_failed,
    write_manifest,
)

if TYPE_CHECKING:
    from cuvee.config import Settings

FORMATS: dict[str, Format] = {}


def register(fmt: Format) -> Format:
    FORMATS[fmt.name] = fmt
    return fmt


def get_format(name: str) -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        raise ConfigError(
            f"unknown export format {name!r}", hint=f"choose one of {', '.join(FORMATS)}"
        ) from None


def default_path(
    settings: Settings, source: ExportSource, fmt: Format, quant: str | None, adapter: bool
):
    """Where an export goes without -o. A format written as a directory (no suffix) puts its
    name in the path, so two such formats (hf, onnx) never share one."""
    stem = source.name + (f"-{quant}" if quant else "") + ("-lora" if adapter else "")
    return settings.home / "exports" / source.name / (stem + (fmt.suffix or f"-{fmt.name}"))


def export(
    settings: Settings,
    store: ModelStore,
    name: str,
    fmt_name: str,
    *,
    quant: str | None = None,
    adapter_only: bool = False,
    out: Path | None = None,
    force: bool = False,
    reporter: Reporter,
) -> dict[str, Any]:
    fmt = get_format(fmt_name)
    if quant is None and fmt.quants:
        quant = fmt.quants[0]
    if quant is not None and quant not in fmt.quants:
        raise ConfigError(
            f"--quant {quant} does not apply to {fmt.name}",
            hint=f"{fmt.name} takes {', '.join(fmt.quants)}" if fmt.quants else "drop --quant",
        )
    source = ExportSource(store, store.get(name))
    if adapter_only:
        if not fmt.adapter_only:
            raise ConfigError(f"--adapter-only is not available for {fmt.name}")
        if not source.is_adapter:
            raise ConfigError(f"{name!r} has no LoRA adapter: it stores complete weights")
    default = default_path(settings, source, fmt, quant, adapter_only)
    out = (out or default).expanduser()
    if out.exists() and not force and not _unrecorded_default(source, out, default):
        raise ConfigError(f"{out} already exists", hint="pass --force to replace it, or -o PATH")
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_abandoned(out)
    scratch = tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", dir=out.parent)
    tmp = Path(scratch) / out.name
    try:
        extra = fmt.write(source, tmp, quant, adapter_only, reporter) or {}
        digest = _digest(tmp)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    except Exception as exc:
        kept = f"{out} is as it was" if out.exists() else f"nothing was written to {out}"
        full = write_failed(exc, tmp, f"the {fmt.name} export of {name!r}", kept)
        if full is not None and not isinstance(exc, CuveeError):
            raise full from exc
        raise
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)
    entry = {
        "format": fmt.name,
        "quantization": quant,
        "adapter_only": adapter_only,
        "path": str(out.resolve()),
        "created_at": utc_now(),
        **digest,
        **extra,
    }
    _record(store, name, entry)
    return entry


def _unrecorded_default(source: ExportSource, out: Path, default: Path) -> bool:
    """Whether ``out`` is cuvee's own default path holding an export the manifest does not
    record: what an export killed between its rename and its record leaves. Replaced without
    --force, so running the same command again completes."""
    if out.resolve() != default.resolve():
        return False
    recorded = {e.get("path") for e in source.model.manifest.exports}
    return str(out.resolve()) not in recorded


def _clean_abandoned(out: Path) -> None:
    """Remove the temporary directories that killed exports to ``out`` left beside it; each is
    named after the process that wrote it, and those of live processes are kept."""
    for path in out.parent.glob(f".{glob.escape(out.name)}.*"):
        pid = path.name[len(out.name) + 2 :].split(".", 1)[0]
        if path.is_dir() and pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _digest(path: Path) -> dict[str, Any]:
    if path.is_file():
        return {"sha256": sha256_file(path), "size": path.stat().st_size}
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return {
        "size": sum(p.stat().st_size for p in files),
        "files": {p.relative_to(path).as_posix(): sha256_file(p) for p in files},
    }


def _record(store: ModelStore, name: str, entry: dict[str, Any]) -> None:
    stored = store.get(name)
    manifest = stored.manifest
    kept = [e for e in manifest.exports if e.get("path") != entry["path"]]
    manifest.exports = [*kept, entry]
    write_manifest(stored.path, manifest)


def find_export(
    stored, fmt: str, quant: str | None = None, *, adapter_only: bool = False
) -> Path | None:
    """The newest recorded export of a format (and quantization), a merged model's or, with
    ``adapter_only``, a LoRA file's, still there at its recorded size (a directory export's
    size is its files' total, as recorded)."""
    for entry in reversed(stored.manifest.exports):
        if entry.get("format") != fmt or bool(entry.get("adapter_only")) != adapter_only:
            continue
        if quant is not None and entry.get("quantization") != quant:
            continue
        path = Path(entry["path"])
        if path.exists() and _digest_size(path) == entry.get("size"):
            return path
    return None


def _digest_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _register_builtin() -> None:
    from cuvee.export import gguf_format, hf, modelfile, to_onnx

    for module in (gguf_format, hf, to_onnx, modelfile):
        register(module.FORMAT)


_register_builtin()
