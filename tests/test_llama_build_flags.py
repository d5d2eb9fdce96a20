"""scripts/llama_cpp_wheel.py: llama.cpp's build flags follow the CPU's features, never AMX, and
wheels are cached by version and flags, so a CPU class never gets another class's build."""

from __future__ import annotations

import importlib.util
import json
import platform
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "llama_cpp_wheel.py"
spec = importlib.util.spec_from_file_location("llama_cpp_wheel", SCRIPT)
wheel = importlib.util.module_from_spec(spec)
spec.loader.exec_module(wheel)

BASE = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma bmi1 bmi2 avx2 popcnt"
AVX512 = "avx512f avx512cd avx512vl avx512dq avx512bw avx512vbmi avx512_vnni avx512_bf16"
# /proc/cpuinfo flag lines of the three CPU classes the project runs on.
SAPPHIRE_RAPIDS = f"{BASE} {AVX512} avx_vnni amx_tile amx_int8 amx_bf16"
ZEN4 = f"{BASE} {AVX512}"
AVX2_ONLY = BASE


def options(flags: str, machine: str = "x86_64") -> dict[str, str]:
    cpuinfo = f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n"
    args = wheel.cmake_args(wheel.cpu_flags(cpuinfo), machine)
    return dict(a.removeprefix("-D").split("=", 1) for a in args)


@pytest.mark.parametrize("flags", [SAPPHIRE_RAPIDS, ZEN4, AVX2_ONLY])
def test_no_build_is_native_or_has_amx(flags: str) -> None:
    opts = options(flags)
    assert opts["GGML_NATIVE"] == "OFF"
    assert opts["GGML_AMX_TILE"] == opts["GGML_AMX_INT8"] == opts["GGML_AMX_BF16"] == "OFF"


def test_an_amx_xeon_keeps_avx512_and_avx_vnni() -> None:
    opts = options(SAPPHIRE_RAPIDS)
    for name in ("GGML_AVX2", "GGML_AVX512", "GGML_AVX512_VNNI", "GGML_AVX512_BF16"):
        assert opts[name] == "ON", name
    assert opts["GGML_AVX_VNNI"] == "ON"


def test_zen4_gets_avx512_without_avx_vnni() -> None:
    opts = options(ZEN4)
    assert opts["GGML_AVX512"] == opts["GGML_AVX512_BF16"] == "ON"
    assert opts["GGML_AVX_VNNI"] == "OFF"


def test_an_avx2_cpu_gets_no_avx512_instruction() -> None:
    opts = options(AVX2_ONLY)
    assert opts["GGML_AVX2"] == opts["GGML_FMA"] == opts["GGML_F16C"] == "ON"
    assert all(opts[k] == "OFF" for k in opts if k.startswith("GGML_AVX512"))


def test_avx512_needs_all_five_foundation_flags() -> None:
    opts = options(BASE + " avx512f avx512cd")  # an early AVX-512 part without BW/VL/DQ
    assert opts["GGML_AVX512"] == "OFF"


def test_arm_keeps_llama_cpps_own_detection() -> None:
    assert "GGML_NATIVE" not in options("fp asimd sve", machine="aarch64")


def test_wheels_are_keyed_by_flags_as_well_as_version() -> None:
    a = wheel.cmake_args(set(ZEN4.split()), "x86_64")
    b = wheel.cmake_args(set(AVX2_ONLY.split()), "x86_64")
    assert wheel.build_key("0.3.36", a) != wheel.build_key("0.3.36", b)
    assert wheel.build_key("0.3.36", a) == wheel.build_key("0.3.36", list(a))
    assert wheel.build_key("0.3.36", a).startswith("0.3.36-")


def test_the_pinned_version_comes_from_the_lock(tmp_path: Path) -> None:
    lock = tmp_path / "lock.txt"
    lock.write_text("numpy==2.4.6\nllama-cpp-python==0.3.36\n")
    assert wheel.pinned_version(lock) == "0.3.36"
    lock.write_text("numpy==2.4.6\n")
    with pytest.raises(SystemExit, match="pins no llama-cpp-python"):
        wheel.pinned_version(lock)


def test_this_venv_was_installed_by_the_script_for_this_cpu() -> None:
    """The project's own install path (make setup) put the marker of this CPU's build here."""
    marker = Path(sys.prefix) / wheel.MARKER
    if not marker.is_file():
        pytest.skip("this venv was not set up by `make setup` (no build marker)")
    recorded = json.loads(marker.read_text())
    flags = wheel.cpu_flags(Path("/proc/cpuinfo").read_text())
    here = wheel.cmake_args(flags, platform.machine())
    assert recorded["cmake_args"] == here
    assert recorded["key"] == wheel.build_key(recorded["version"], here)
