#!/usr/bin/env python3
"""Build and install llama-cpp-python for the CPU this runs on, with llama.cpp's AMX path off.

Why not the default build: llama-cpp-python compiles llama.cpp with ``-march=native``, which on
Intel Xeons with AMX (Sapphire Rapids and later) turns on the AMX matrix kernels, and those crash
with a segmentation fault on many such machines, virtualised ones especially
(ggml-org/llama.cpp#20824). This script compiles with ``GGML_NATIVE=OFF`` and names each x86
feature the CPU reports (SSE4.2 up to AVX-512 BF16) except AMX, so an AVX-512 machine keeps its
AVX-512 kernels and weight repacking, an AVX2 machine gets AVX2, and no build contains AMX code.

Why not pip's cache: pip keys a built wheel by name and version, not by the flags it was built
with, so a machine that once built the crashing wheel would get it back. Wheels are kept here
under a key of version and flags (``~/.cache/cuvee/wheels``, or ``$CUVEE_WHEEL_CACHE``), and a
venv is reinstalled only when its build key differs from the one this CPU needs.

Stdlib only: it runs before anything else is installed.

    python3 scripts/llama_cpp_wheel.py --python .venv/bin/python --lock constraints.txt
    python3 scripts/llama_cpp_wheel.py --print-args      # the CMAKE_ARGS this CPU gets
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGE = "llama-cpp-python"
MARKER = "cuvee-llama-build.json"  # written into the venv's prefix after an install

# ggml's CMake option -> the /proc/cpuinfo flags that all must be present to turn it on.
# AMX (GGML_AMX_TILE/INT8/BF16) is deliberately absent: it stays off on every machine.
X86_OPTIONS: dict[str, tuple[str, ...]] = {
    "GGML_SSE42": ("sse4_2",),
    "GGML_AVX": ("avx",),
    "GGML_AVX2": ("avx2",),
    "GGML_FMA": ("fma",),
    "GGML_F16C": ("f16c",),
    "GGML_BMI2": ("bmi2",),
    "GGML_AVX_VNNI": ("avx_vnni",),
    "GGML_AVX512": ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"),
    "GGML_AVX512_VBMI": ("avx512vbmi",),
    "GGML_AVX512_VNNI": ("avx512_vnni",),
    "GGML_AVX512_BF16": ("avx512_bf16",),
}
# Fixed for every build: no AMX, no multimodal library (cuvee does not load it), no OpenMP
# dependency differences between machines are introduced here (llama.cpp's default is kept).
FIXED_ARGS = (
    "-DGGML_NATIVE=OFF",
    "-DGGML_AMX_TILE=OFF",
    "-DGGML_AMX_INT8=OFF",
    "-DGGML_AMX_BF16=OFF",
    "-DLLAVA_BUILD=OFF",
)


def cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags of the first processor in a /proc/cpuinfo text."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cmake_args(flags: set[str], machine: str) -> list[str]:
    """CMAKE_ARGS for llama.cpp on a CPU with these flags. Non-x86 machines keep the native
    build: the AMX problem is x86-only and ARM's feature detection differs."""
    if machine not in ("x86_64", "AMD64", "i686"):
        return ["-DLLAVA_BUILD=OFF"]
    args = list(FIXED_ARGS)
    for option, needed in X86_OPTIONS.items():
        args.append(f"-D{option}={'ON' if all(f in flags for f in needed) else 'OFF'}")
    return args


def pinned_version(lock: Path) -> str:
    text = lock.read_text(encoding="utf-8")
    found = re.search(r"^llama[-_]cpp[-_]python==([^\s;#]+)", text, re.MULTILINE | re.IGNORECASE)
    if not found:
        raise SystemExit(f"error: {lock} pins no {PACKAGE} version (a line {PACKAGE}==X)")
    return found.group(1)


def build_key(version: str, args: list[str]) -> str:
    digest = hashlib.sha256(" ".join(args).encode()).hexdigest()[:12]
    return f"{version}-{digest}"


def wheel_cache() -> Path:
    root = os.environ.get("CUVEE_WHEEL_CACHE") or Path.home() / ".cache" / "cuvee" / "wheels"
    return Path(root) / PACKAGE


def installed_key(python: str) -> str | None:
    prefix = subprocess.run(
        [python, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    marker = Path(prefix) / MARKER
    try:
        return json.loads(marker.read_text())["key"]
    except (OSError, ValueError, KeyError):
        return None


def build_wheel(python: str, version: str, args: list[str], dest: Path) -> Path:
    """Compile the sdist into ``dest`` (a few minutes on 2 cores) and return the wheel."""
    dest.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, CMAKE_ARGS=" ".join(args))
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
    print(f"building {PACKAGE}=={version} with CMAKE_ARGS={env['CMAKE_ARGS']}", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        subprocess.run(
            [python, "-m", "pip", "wheel", "-q", "--no-deps", "--no-cache-dir",
             "--no-binary", PACKAGE, f"{PACKAGE}=={version}", "-w", tmp],
            env=env, check=True,
        )  # fmt: skip
        built = sorted(Path(tmp).glob("*.whl"))
        if len(built) != 1:
            raise SystemExit(f"error: pip wheel left {len(built)} wheels in {tmp}, expected 1")
        final = dest / built[0].name
        os.replace(built[0], final)  # the cache only ever holds complete wheels
    return final


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable, help="the venv's python")
    parser.add_argument("--lock", type=Path, default=Path("constraints.txt"))
    parser.add_argument("--print-args", action="store_true", help="print CMAKE_ARGS and exit")
    parser.add_argument(
        "--cpu-flags",
        help="build for a CPU with these /proc/cpuinfo flags (space-separated) instead of this "
        "one, e.g. the oldest CPU of a fleet that shares one build",
    )
    opts = parser.parse_args()

    if opts.cpu_flags is not None:
        flags = set(opts.cpu_flags.split())
    else:
        try:
            flags = cpu_flags(Path("/proc/cpuinfo").read_text())
        except OSError:
            flags = set()
    args = cmake_args(flags, platform.machine())
    if opts.print_args:
        print(" ".join(args))
        return 0

    version = pinned_version(opts.lock)
    key = build_key(version, args)
    if installed_key(opts.python) == key:
        return 0
    slot = wheel_cache() / key
    wheels = sorted(slot.glob("*.whl")) if slot.is_dir() else []
    wheel = wheels[0] if wheels else build_wheel(opts.python, version, args, slot)
    subprocess.run(
        [opts.python, "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", str(wheel)],
        check=True,
    )
    prefix = subprocess.run(
        [opts.python, "-c", "import sys; print(sys.prefix)"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    (Path(prefix) / MARKER).write_text(
        json.dumps({"key": key, "version": version, "cmake_args": args, "wheel": str(wheel)})
    )
    print(f"{PACKAGE}=={version} installed from {wheel}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
