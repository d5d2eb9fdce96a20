"""What a bench ran on: CPU, cores, llama.cpp build features, library versions, cuvee commit."""

# Every script in bench/ prints describe()'s block before its figures and puts the compact form it
# returns into its last JSON line (bench/ is on sys.path when a script runs as `python bench/x.py`).

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# (distribution name, import name): reported only when the module can be imported here.
LIBRARIES = (
    ("cuvee", "cuvee"),
    ("llama-cpp-python", "llama_cpp"),
    ("torch", "torch"),
    ("transformers", "transformers"),
    ("peft", "peft"),
    ("sentence-transformers", "sentence_transformers"),
    ("numpy", "numpy"),
    ("safetensors", "safetensors"),
    ("tokenizers", "tokenizers"),
    ("httpx", "httpx"),
    ("fastapi", "fastapi"),
    ("uvicorn", "uvicorn"),
)


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo, else lscpu, else the platform module."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if shutil.which("lscpu"):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """CPUs this process may run on (the affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def gpu_names() -> list[str]:
    """NVIDIA GPUs as nvidia-smi names them (none where it is absent)."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def llama_system_info() -> str | None:
    """llama.cpp's own line of compiled-in CPU features, from the installed binding."""
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    try:
        import llama_cpp

        raw = llama_cpp.llama_print_system_info()
    except Exception as exc:  # a binding that fails to load is itself worth reporting
        return f"unavailable ({exc.__class__.__name__}: {exc})"
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return " ".join(text.split())


def llama_features(info: str | None) -> list[str]:
    """The features switched on in a system-info line ('AVX2 = 1 | ...' -> ['AVX2', ...])."""
    if not info:
        return []
    on = []
    for part in info.replace(":", "|").split("|"):
        name, sep, value = part.partition("=")
        if sep and value.strip() == "1":
            on.append(name.strip())
    return on


def versions() -> dict[str, str]:
    found = {}
    for dist, module in LIBRARIES:
        try:
            if importlib.util.find_spec(module) is None:
                continue
            found[dist] = importlib.metadata.version(dist)
        except (importlib.metadata.PackageNotFoundError, ImportError, ValueError):
            continue
    return found


def git_commit() -> str | None:
    """The repository's HEAD, short, with '+dirty' when tracked files differ from it."""
    if not shutil.which("git"):
        return None

    def git(*args: str) -> str | None:
        proc = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
        )
        return proc.stdout.strip() if proc.returncode == 0 else None

    head = git("rev-parse", "--short=12", "HEAD")
    if head is None:
        return None
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return head + ("+dirty" if dirty else "")


def collect() -> dict:
    """Everything, in full."""
    info = llama_system_info()
    return {
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "logical_cpus": os.cpu_count(),
        "memory_gib": memory_gib(),
        "gpus": gpu_names(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "llama_system_info": info,
        "llama_features": llama_features(info),
        "versions": versions(),
        "commit": git_commit(),
    }


def compact(full: dict) -> dict:
    """The short form for a bench's JSON line."""
    out = {
        "cpu": full["cpu"],
        "cores": full["cores"],
        "commit": full["commit"],
        "versions": full["versions"],
        "llama_features": " ".join(full["llama_features"]),
    }
    if full["gpus"]:
        out["gpus"] = full["gpus"]
    return out


def describe(file=None) -> dict:
    """Print the machine block (to stdout unless told) and return its compact form."""
    full = collect()
    stream = file or sys.stdout
    libs = ", ".join(f"{k} {v}" for k, v in full["versions"].items()) or "none found"
    lines = [
        f"machine: {full['cpu']}, {full['cores']} usable cores of {full['logical_cpus']}, "
        f"{full['memory_gib']} GiB, {full['os']}, Python {full['python']}",
        f"cuvee commit: {full['commit'] or 'unknown'}",
        f"libraries: {libs}",
        f"llama.cpp system info: {full['llama_system_info'] or 'llama_cpp not importable'}",
    ]
    if full["gpus"]:
        lines.append(f"GPUs: {', '.join(full['gpus'])}")
    print("\n".join(lines), file=stream, flush=True)
    return compact(full)


if __name__ == "__main__":
    import json

    print(json.dumps(describe()))
