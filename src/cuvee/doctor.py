"""What a bug report needs: this machine, the builds cuvee runs on, and each problem with its fix.

Each check is a function in ``CHECKS`` returning one ``Finding``; `cuvee doctor` runs them all
and prints them (or one JSON object). A check never raises: what it cannot find is its finding.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from cuvee.config import Settings

Status = Literal["ok", "warn", "error"]
LLAMA_BUILD_MARKER = "cuvee-llama-build.json"  # written by scripts/llama_cpp_wheel.py
MIN_FREE_DISK_GB = 5.0  # the base model in the store (1.3 GB) plus a fine-tune and its exports
MIN_AVAILABLE_MEMORY_GB = 3.0  # LoRA training of the 270M base at batch 8 x 256 tokens


@dataclass
class Finding:
    """One check's result: a status, what was found, and the fix when something is wrong."""

    name: str
    status: Status
    summary: str
    details: dict[str, Any] = field(default_factory=dict)
    fix: str | None = None


def _meminfo() -> dict[str, int]:
    values: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                values[name] = int(parts[0]) * 1024
    return values


def check_cpu(settings: Settings) -> Finding:
    from cuvee.native.probe import SIMD_FLAGS, cpu_description

    model, flags = cpu_description()
    simd = sorted(f for f in flags if f in SIMD_FLAGS)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    details = {"model": model, "simd_flags": simd, "logical_cpus": os.cpu_count(), "usable": usable}
    if flags and "avx2" not in flags:
        return Finding(
            "cpu",
            "warn",
            f"{model}: no AVX2, so llama.cpp and torch run their slowest kernels",
            details,
            "expect a few tokens a second; a CPU with AVX2 or better is several times faster",
        )
    return Finding("cpu", "ok", f"{model}, {usable} usable threads, {' '.join(simd)}", details)


def check_memory(settings: Settings) -> Finding:
    info = _meminfo()
    total, available = info.get("MemTotal"), info.get("MemAvailable")
    if total is None or available is None:
        return Finding("memory", "ok", "not readable on this system (no /proc/meminfo)")
    gb = 1024**3
    details = {"total_gb": round(total / gb, 1), "available_gb": round(available / gb, 1)}
    summary = f"{details['available_gb']} GB available of {details['total_gb']} GB"
    if available / gb < MIN_AVAILABLE_MEMORY_GB:
        return Finding(
            "memory",
            "warn",
            summary,
            details,
            f"training needs about {MIN_AVAILABLE_MEMORY_GB:.0f} GB free: close other programs "
            "or lower the batch size (`cuvee train --batch-size`)",
        )
    return Finding("memory", "ok", summary, details)


def check_disk(settings: Settings) -> Finding:
    home = settings.home
    probe = home
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free / 1024**3
    details = {"home": str(home), "free_gb": round(free, 1), "home_exists": home.exists()}
    summary = f"{free:.1f} GB free for CUVEE_HOME ({home})"
    if free < MIN_FREE_DISK_GB:
        return Finding(
            "disk",
            "warn",
            summary,
            details,
            f"keep at least {MIN_FREE_DISK_GB:.0f} GB free there, or point CUVEE_HOME at a "
            "larger disk",
        )
    return Finding("disk", "ok", summary, details)


def check_torch(settings: Settings) -> Finding:
    try:
        import torch
    except ImportError as exc:
        return Finding(
            "torch",
            "error",
            f"torch does not import: {exc}",
            fix="pip install -c constraints.txt torch   (the lock pins the CPU build)",
        )
    cuda_build = torch.version.cuda
    cuda_ok = bool(cuda_build) and torch.cuda.is_available()
    from cuvee.train.throughput import bf16_supported

    try:
        x = torch.ones(4, 4, dtype=torch.bfloat16)
        bf16 = bool((x @ x).float().sum().item() == 64.0)
    except RuntimeError:
        bf16 = False
    # torch computes bf16 on any CPU, but only AVX512-BF16 or AMX make it faster than fp32:
    # elsewhere `precision: auto` trains in fp32, several times slower a step than with them
    native = bf16_supported("cpu")
    details = {
        "version": torch.__version__,
        "build": f"CUDA {cuda_build}" if cuda_build else "CPU",
        "cuda_available": cuda_ok,
        "cpu_bf16": bf16,
        "cpu_bf16_native": native,
        "cpu_train_precision": "bf16" if native and bf16 else "fp32",
        "threads": torch.get_num_threads(),
    }
    summary = f"{torch.__version__}, {details['build']} build, {torch.get_num_threads()} threads"
    summary += (
        ", trains in bf16 on the CPU (native)"
        if native and bf16
        else ", trains in fp32 on the CPU (no native bf16: AVX512-BF16 or AMX)"
    )
    if cuda_build and not cuda_ok:
        return Finding(
            "torch",
            "warn",
            summary + ", but no GPU is visible",
            details,
            "a CUDA build of torch without a GPU costs several GB for nothing: reinstall with "
            "`pip install -c constraints.txt --force-reinstall torch` (the CPU wheel)",
        )
    return Finding("torch", "ok", summary, details)


def _llama_build() -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        return json.loads((Path(sys.prefix) / LLAMA_BUILD_MARKER).read_text())
    return {}


def check_llama_cpp(settings: Settings) -> Finding:
    try:
        import llama_cpp
    except (ImportError, OSError) as exc:
        return Finding(
            "llama.cpp",
            "error",
            f"llama-cpp-python does not import: {exc}",
            fix="make setup   (builds llama-cpp-python for this CPU)",
        )
    info = llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip()
    features = dict(re.findall(r"(\w+) = (\d)", info))
    build = _llama_build()
    details = {
        "version": importlib.metadata.version("llama-cpp-python"),
        "system_info": info,
        "amx_compiled": features.get("AMX_INT8") == "1",
        "built_by_cuvee": bool(build),
        "cmake_args": build.get("cmake_args"),
    }
    summary = f"llama-cpp-python {details['version']}"
    summary += ", built by cuvee for this CPU" if build else ", built outside cuvee's setup"
    if details["amx_compiled"]:
        return Finding(
            "llama.cpp",
            "warn",
            summary + ", with AMX kernels compiled in (they crash on many Xeons)",
            details,
            "the engine probe decides whether they run here; to leave them out: "
            "python3 scripts/llama_cpp_wheel.py --python $(which python)",
        )
    return Finding("llama.cpp", "ok", summary, details)


def check_engine(settings: Settings, *, force: bool = False) -> Finding:
    if importlib.util.find_spec("llama_cpp") is None:
        return Finding("engine probe", "error", "not run: llama-cpp-python is not installed")
    from cuvee.native.probe import REBUILD_FIX, probe

    verdict = probe(settings, force=force)
    details = verdict.to_dict()
    buffers = next((a.buffers for a in verdict.attempts if a.ok), [])
    if not verdict.ok:
        return Finding("engine probe", "error", verdict.summary(), details, REBUILD_FIX)
    summary = verdict.summary() + (f"; model buffers: {', '.join(buffers)}" if buffers else "")
    if verdict.fell_back:
        return Finding("engine probe", "warn", summary, details, REBUILD_FIX)
    return Finding("engine probe", "ok", summary, details)


def _requirement_names(extra: str | None = None) -> list[str]:
    names = []
    for req in importlib.metadata.requires("cuvee") or []:
        name = re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0]
        in_extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)", req)
        if (in_extra.group(1) if in_extra else None) == extra:
            names.append(name)
    return names


def check_dependencies(settings: Settings) -> Finding:
    try:
        names = _requirement_names()
    except importlib.metadata.PackageNotFoundError:
        return Finding("dependencies", "warn", "cuvee is not installed as a package")
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    missing = [n for n, v in versions.items() if v is None]
    details = {"versions": versions, "python": sys.version.split()[0]}
    if missing:
        return Finding(
            "dependencies",
            "error",
            f"missing: {', '.join(missing)}",
            details,
            "make setup   (or: pip install -c constraints.txt -e .)",
        )
    return Finding(
        "dependencies", "ok", f"all {len(names)} runtime dependencies installed", details
    )


def check_embedding_model(settings: Settings) -> Finding:
    from cuvee.errors import CuveeError

    if settings.embedding_model is not None:
        path = Path(settings.embedding_model).expanduser()
        if (path / "config.json").is_file():
            return Finding("embedding model", "ok", f"{path} (CUVEE_EMBEDDING_MODEL)")
        return Finding(
            "embedding model",
            "error",
            f"CUVEE_EMBEDDING_MODEL={path} is not a model directory (no config.json)",
            fix="point CUVEE_EMBEDDING_MODEL at a sentence-transformers model directory",
        )
    from cuvee.embeddings import INSTALL_HINT, default_embedding_model_dir

    try:
        path = default_embedding_model_dir()
    except CuveeError:
        return Finding(
            "embedding model",
            "warn",
            "the default all-MiniLM-L6-v2 is not installed: `cuvee docs` and /v1/embeddings "
            "will not work",
            fix=INSTALL_HINT,
        )
    return Finding("embedding model", "ok", f"all-MiniLM-L6-v2 at {path}", {"path": str(path)})


def check_base_model(settings: Settings) -> Finding:
    from cuvee.catalog import CATALOG

    name = settings.default_base
    in_store = (settings.models_dir / name / "cuvee.json").is_file()
    entry = CATALOG.get(name)
    details = {"name": name, "in_store": in_store}
    if in_store:
        return Finding("base model", "ok", f"{name} is in the store", details)
    if entry is None:
        return Finding(
            "base model",
            "warn",
            f"the default base {name!r} is neither in the store nor in the catalog",
            details,
            "cuvee models add PATH --name NAME, or set CUVEE_DEFAULT_BASE",
        )
    module = entry.pip_package.replace("-", "_")
    if importlib.util.find_spec(module) is None:
        return Finding(
            "base model",
            "warn",
            f"{name} is not in the store and its package {entry.pip_package} is not installed",
            details,
            entry.install_hint,
        )
    return Finding(
        "base model", "ok", f"{name} can be pulled offline (cuvee models pull {name})", details
    )


CHECKS: dict[str, Callable[[Settings], Finding]] = {
    "cpu": check_cpu,
    "memory": check_memory,
    "disk": check_disk,
    "torch": check_torch,
    "llama.cpp": check_llama_cpp,
    "engine probe": check_engine,
    "dependencies": check_dependencies,
    "embedding model": check_embedding_model,
    "base model": check_base_model,
}


def run_checks(settings: Settings, *, reprobe: bool = False) -> list[Finding]:
    """Every check, in order; a check that fails unexpectedly is reported, not raised."""
    checks = {**CHECKS, "engine probe": functools.partial(check_engine, force=reprobe)}
    findings = []
    for name, check in checks.items():
        try:
            findings.append(check(settings))
        except Exception as exc:  # a doctor that crashes helps nobody
            findings.append(Finding(name, "error", f"the check itself failed: {exc!r}"))
    return findings


def report(findings: list[Finding]) -> dict[str, Any]:
    from cuvee import __version__

    return {
        "cuvee": __version__,
        "problems": sum(f.status != "ok" for f in findings),
        "errors": sum(f.status == "error" for f in findings),
        "checks": [asdict(f) for f in findings],
    }
