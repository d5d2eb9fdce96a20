"""The engine probe: llama.cpp runs a tiny model in a child process before cuvee trusts it on
this machine, so a native crash becomes a clear error and a working fallback, not a dead command.

Why: llama-cpp-python compiles llama.cpp for the CPU that builds it, and some paths crash on some
CPUs. The known case is the AMX kernels of Intel Xeons (Sapphire Rapids and later): weights
repacked into an "AMX" buffer, then a segmentation fault on the first matrix product
(ggml-org/llama.cpp#20824). Turning llama.cpp's extra buffer types off (``use_extra_bufts``,
i.e. no weight repacking) avoids it, at some speed cost on AVX-512 machines. A wheel built on
another CPU can also die of SIGILL. A crash cannot be caught in-process, so it is tried in a child.

Configurations are tried in order (repacking on, then off); the verdict is cached per CPU and
llama.cpp build under ``$CUVEE_CACHE/engine-probe/`` so the child runs once per machine and build.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cuvee.config import Settings, load_settings
from cuvee.errors import CuveeError

PROBE_TIMEOUT_S = 180.0
# CPU flags that decide which llama.cpp kernels can run; shown in errors and `cuvee doctor`.
SIMD_FLAGS = (
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)
REBUILD_FIX = (
    "rebuild llama-cpp-python for this CPU's own features, AMX off: `make setup` in a cuvee "
    'checkout (scripts/llama_cpp_wheel.py), or CMAKE_ARGS="$(python3 scripts/llama_cpp_wheel.py '
    '--print-args)" pip install --force-reinstall --no-cache-dir --no-binary llama-cpp-python '
    "llama-cpp-python"
)


class EngineCrashError(CuveeError):
    """llama.cpp dies on this machine in every configuration cuvee knows."""


@dataclass(frozen=True)
class ProbeConfig:
    """One way of running llama.cpp that the probe can try."""

    name: str
    repack: bool  # llama_model_params.use_extra_bufts
    description: str


# Tried in this order; the first that survives is used.
CONFIGS: tuple[ProbeConfig, ...] = (
    ProbeConfig("repack", True, "llama.cpp's default: weights repacked for the CPU's kernels"),
    ProbeConfig("plain", False, "no weight repacking (use_extra_bufts off; AMX never used)"),
)
_BY_NAME = {c.name: c for c in CONFIGS}
_FORCED = {"on": "repack", "off": "plain"}  # the engine_repack setting


@dataclass
class Attempt:
    """What one child run of one configuration did."""

    config: str
    outcome: str  # "ok", "signal SIGSEGV", "exit 1", "timed out after 180 s"
    seconds: float
    buffers: list[str] = field(default_factory=list)  # llama.cpp's model buffer lines
    detail: str = ""  # the child's last output lines when it failed

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


@dataclass
class Verdict:
    """The probe's result for this machine and build: which configuration to run, and why."""

    key: str
    cpu_model: str
    cpu_flags: list[str]
    llama_cpp_version: str
    attempts: list[Attempt]
    checked_at: float

    @property
    def config(self) -> ProbeConfig | None:
        for attempt in self.attempts:
            if attempt.ok:
                return _BY_NAME[attempt.config]
        return None

    @property
    def ok(self) -> bool:
        return self.config is not None

    @property
    def repack(self) -> bool:
        config = self.config
        return config.repack if config is not None else False

    @property
    def fell_back(self) -> bool:
        return self.ok and not self.attempts[0].ok

    def summary(self) -> str:
        tried = ", ".join(f"{a.config}: {a.outcome}" for a in self.attempts)
        cpu = f"{self.cpu_model} ({' '.join(self.cpu_flags) or 'no AVX2'})"
        if not self.ok:
            why = (
                " (SIGILL: the build uses instructions this CPU lacks; it was built for another)"
                if any(a.outcome == "signal SIGILL" for a in self.attempts)
                else ""
            )
            return (
                f"llama.cpp {self.llama_cpp_version} crashes on this CPU in every configuration "
                f"cuvee knows ({tried}){why}; CPU: {cpu}"
            )
        if self.fell_back:
            failed = self.attempts[0]
            return (
                f"llama.cpp {self.llama_cpp_version} crashed in a test run on this CPU with "
                f"{failed.config} ({failed.outcome}); cuvee runs it as {self.config.name!r} "
                f"({self.config.description}); CPU: {cpu}"
            )
        return f"llama.cpp {self.llama_cpp_version} runs as {self.config.name!r} ({tried})"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(ok=self.ok, config=self.config.name if self.config else None)
        data.update(repack=self.repack, fell_back=self.fell_back, summary=self.summary())
        data["fix"] = None if self.ok and not self.fell_back else REBUILD_FIX
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verdict:
        attempts = [Attempt(**a) for a in data["attempts"]]
        return cls(
            key=data["key"],
            cpu_model=data["cpu_model"],
            cpu_flags=list(data["cpu_flags"]),
            llama_cpp_version=data["llama_cpp_version"],
            attempts=attempts,
            checked_at=float(data["checked_at"]),
        )


def cpu_description() -> tuple[str, set[str]]:
    """The CPU's model name and feature flags (Linux /proc/cpuinfo; the platform elsewhere)."""
    model, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            name, _, value = line.partition(":")
            name = name.strip()
            if name == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif name in ("flags", "Features") and not flags:
                flags = set(value.split())
    return model, flags


def _llama_library_files() -> list[Path]:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.origin:
        return []
    lib = Path(spec.origin).parent / "lib"
    return sorted(p for p in lib.glob("*") if p.is_file()) if lib.is_dir() else []


def build_key(cpu_model: str, flags: set[str], version: str) -> str:
    """Identifies this CPU and this llama.cpp build: a rebuilt or moved library probes again."""
    parts = [cpu_model, " ".join(sorted(flags)), version, sys.executable]
    for lib in _llama_library_files():
        stat = lib.stat()
        parts.append(f"{lib.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _llama_version() -> str:
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def child_argv(config: ProbeConfig, workdir: Path) -> list[str]:
    """The command of one child run (a seam for tests that make the child die)."""
    return [sys.executable, "-m", "cuvee.native.probe_child", config.name, str(workdir)]


def _run_child(config: ProbeConfig, workdir: Path) -> Attempt:
    started = time.monotonic()
    try:
        proc = subprocess.run(
            child_argv(config, workdir),
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        seconds = time.monotonic() - started
        return Attempt(config.name, f"timed out after {PROBE_TIMEOUT_S:.0f} s", seconds)
    seconds = round(time.monotonic() - started, 2)
    tail = "\n".join((proc.stderr or "").strip().splitlines()[-6:])
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = str(-proc.returncode)
        return Attempt(config.name, f"signal {name}", seconds, detail=tail)
    if proc.returncode != 0:
        return Attempt(config.name, f"exit {proc.returncode}", seconds, detail=tail)
    try:
        report = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return Attempt(config.name, "exit 0 without a report", seconds, detail=tail)
    return Attempt(config.name, "ok", seconds, buffers=list(report.get("buffers", [])))


def _cache_file(settings: Settings, key: str) -> Path:
    return settings.cache / "engine-probe" / f"{key}.json"


def probe(settings: Settings | None = None, *, force: bool = False) -> Verdict:
    """Run (or read from the cache) the probe for this machine and build; never raises for a
    crash: the verdict says what happened. ``force`` ignores the cache."""
    settings = settings or load_settings()
    cpu_model, flags = cpu_description()
    version = _llama_version()
    key = build_key(cpu_model, flags, version) + f"-{settings.engine_repack}"
    cache = _cache_file(settings, key)
    if not force:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            return Verdict.from_dict(json.loads(cache.read_text()))

    forced = _FORCED.get(settings.engine_repack)
    configs = [_BY_NAME[forced]] if forced else list(CONFIGS)
    attempts: list[Attempt] = []
    with tempfile.TemporaryDirectory(prefix="cuvee-probe-") as tmp:
        for config in configs:
            attempt = _run_child(config, Path(tmp))
            attempts.append(attempt)
            if attempt.ok:
                break
    verdict = Verdict(
        key=key,
        cpu_model=cpu_model,
        cpu_flags=sorted(f for f in flags if f in SIMD_FLAGS),
        llama_cpp_version=version,
        attempts=attempts,
        checked_at=time.time(),
    )
    # A timeout is not a verdict about the CPU (a loaded machine), so it is not remembered.
    if not any(a.outcome.startswith("timed out") for a in attempts):
        with contextlib.suppress(OSError):
            cache.parent.mkdir(parents=True, exist_ok=True)
            partial = cache.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(json.dumps(verdict.to_dict(), indent=2))
            os.replace(partial, cache)
    return verdict


_WARNED: set[str] = set()


def engine_verdict(settings: Settings | None = None) -> Verdict:
    """The verdict the engine runs by: raises EngineCrashError when no configuration survives,
    and says once on stderr when cuvee fell back to a slower one."""
    verdict = probe(settings)
    if not verdict.ok:
        detail = next((a.detail for a in verdict.attempts if a.detail), "")
        raise EngineCrashError(
            verdict.summary() + (f"\n  last output: {detail}" if detail else ""),
            hint=REBUILD_FIX + "; `cuvee doctor` shows the details",
        )
    if verdict.fell_back and verdict.key not in _WARNED:
        _WARNED.add(verdict.key)
        print(f"warning: {verdict.summary()}\n  hint: {REBUILD_FIX}", file=sys.stderr)
    return verdict
