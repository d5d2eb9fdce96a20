"""The engine probe and `cuvee doctor`: llama.cpp is tried in a child process, a child killed by a
signal becomes a clear error or a fallback, and the verdict is cached per machine and build."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest

from cuvee.cli import cli
from cuvee.config import load_settings
from cuvee.native import probe
from cuvee.native.probe_child import write_tiny_gguf

pytest.importorskip("llama_cpp")

DIE_BY_SEGV = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]
DIE_BY_SIGILL = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGILL)"]


@pytest.fixture
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache of this test's own, so the verdict is computed here and not read from the run's."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("CUVEE_CACHE", str(cache))
    return cache


def crash_for(monkeypatch: pytest.MonkeyPatch, dying: dict[str, list[str]]) -> list[str]:
    """Make the child of the named configurations die as given; the others run for real.
    Returns the list of configurations the probe ran, in order."""
    real = probe.child_argv
    ran: list[str] = []

    def argv(config: probe.ProbeConfig, workdir: Path) -> list[str]:
        ran.append(config.name)
        return dying.get(config.name) or real(config, workdir)

    monkeypatch.setattr(probe, "child_argv", argv)
    return ran


def test_the_real_child_runs_llama_cpp_and_the_verdict_is_cached(
    own_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    verdict = probe.probe(load_settings())
    assert verdict.ok and not verdict.fell_back
    assert verdict.config.name == "repack" and verdict.repack
    assert verdict.attempts[0].buffers, "the child reports llama.cpp's model buffers"
    cached = list((own_cache / "engine-probe").glob("*.json"))
    assert len(cached) == 1

    ran = crash_for(monkeypatch, {"repack": DIE_BY_SEGV, "plain": DIE_BY_SEGV})
    again = probe.probe(load_settings())
    assert ran == [], "a cached verdict runs no child"
    assert again.ok and again.key == verdict.key


def test_a_child_killed_by_a_signal_falls_back_to_the_plain_configuration(
    own_cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ran = crash_for(monkeypatch, {"repack": DIE_BY_SEGV})
    verdict = probe.engine_verdict(load_settings())
    assert ran == ["repack", "plain"]
    assert verdict.ok and verdict.fell_back
    assert not verdict.repack
    assert verdict.attempts[0].outcome == "signal SIGSEGV"
    err = capsys.readouterr().err
    assert "crashed in a test run on this CPU with repack (signal SIGSEGV)" in err
    assert "scripts/llama_cpp_wheel.py" in err


def test_the_engine_opens_a_model_without_repacking_after_a_fallback(
    own_cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from cuvee.engine import open_engine

    crash_for(monkeypatch, {"repack": DIE_BY_SEGV})
    model = tmp_path / "tiny.gguf"
    write_tiny_gguf(model)
    seen = {}
    real_load = probe_engine_loader(monkeypatch, seen)
    with open_engine("llamacpp", model, n_seq_max=1, n_ctx=64, n_threads=1) as engine:
        assert engine.n_ctx_train == 128
    assert real_load and seen["use_extra_bufts"] is False


def probe_engine_loader(monkeypatch: pytest.MonkeyPatch, seen: dict) -> bool:
    """Record the model params the engine loads with."""
    import cuvee.engine.llamacpp as llamacpp

    real = llamacpp.llama.llama_model_load_from_file

    def load(path, params):
        seen["use_extra_bufts"] = bool(params.use_extra_bufts)
        return real(path, params)

    monkeypatch.setattr(llamacpp.llama, "llama_model_load_from_file", load)
    return True


def test_when_every_configuration_dies_the_error_names_the_signal_cpu_and_fix(
    own_cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from cuvee.engine import open_engine

    crash_for(monkeypatch, {"repack": DIE_BY_SEGV, "plain": DIE_BY_SIGILL})
    model = tmp_path / "tiny.gguf"
    write_tiny_gguf(model)
    with pytest.raises(probe.EngineCrashError) as caught:
        open_engine("llamacpp", model, n_seq_max=1, n_ctx=64, n_threads=1)
    text = str(caught.value)
    assert "repack: signal SIGSEGV" in text and "plain: signal SIGILL" in text
    assert "instructions this CPU lacks" in text
    cpu_model, _ = probe.cpu_description()
    assert cpu_model in text
    assert "llama_cpp_wheel.py" in text and "cuvee doctor" in text


def test_the_cli_turns_a_crash_into_a_clear_error_and_a_failing_exit(
    own_cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cuvee.cli import main

    crash_for(monkeypatch, {"repack": DIE_BY_SEGV, "plain": DIE_BY_SEGV})
    with pytest.raises(SystemExit) as exited:
        main(["doctor", "--json"])
    assert exited.value.code == 1
    report = json.loads(capsys.readouterr().out)
    engine = next(c for c in report["checks"] if c["name"] == "engine probe")
    assert engine["status"] == "error"
    assert "signal SIGSEGV" in engine["summary"]
    assert "llama_cpp_wheel.py" in engine["fix"]


def test_a_forced_setting_probes_only_that_configuration(
    own_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUVEE_ENGINE_REPACK", "off")
    ran = crash_for(monkeypatch, {})
    verdict = probe.probe(load_settings())
    assert ran == ["plain"] and verdict.ok and not verdict.repack


def test_a_timeout_is_reported_but_not_cached(
    own_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(probe, "PROBE_TIMEOUT_S", 0.5)
    sleeper = [sys.executable, "-c", "import time; time.sleep(30)"]
    crash_for(monkeypatch, {"repack": sleeper, "plain": sleeper})
    verdict = probe.probe(load_settings())
    assert not verdict.ok
    assert verdict.attempts[0].outcome.startswith("timed out")
    assert not list(own_cache.glob("engine-probe/*.json"))


def test_signal_names_are_what_the_kernel_reports() -> None:
    # The probe reads a negative return code as the signal that killed the child.
    assert signal.Signals(11).name == "SIGSEGV"


def test_doctor_json_reports_every_check_and_the_probe(own_cache: Path) -> None:
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, ["doctor", "--json"])
    report = json.loads(result.output)
    names = [c["name"] for c in report["checks"]]
    assert names == [
        "cpu",
        "memory",
        "disk",
        "torch",
        "llama.cpp",
        "engine probe",
        "dependencies",
        "embedding model",
        "base model",
    ]
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["engine probe"]["status"] == "ok"
    assert checks["engine probe"]["details"]["config"] == "repack"
    assert "system_info" in checks["llama.cpp"]["details"]
    assert checks["torch"]["details"]["version"]
    assert checks["dependencies"]["details"]["versions"]["llama-cpp-python"]
    for check in report["checks"]:
        assert check["status"] == "ok" or check["fix"], f"{check['name']} has a problem, no fix"
    assert result.exit_code == (1 if report["errors"] else 0)


def test_doctor_text_names_problems_with_their_fix(
    own_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    monkeypatch.setenv("CUVEE_EMBEDDING_MODEL", "/nonexistent/model")
    result = CliRunner().invoke(cli, ["doctor"])
    assert result.exit_code == 1
    assert "FAIL  embedding model" in result.output
    assert "fix: point CUVEE_EMBEDDING_MODEL" in result.output


@pytest.mark.parametrize("native", [True, False])
def test_doctor_says_in_which_precision_this_cpu_trains(
    monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    # torch computes bf16 on any CPU; what matters to a user is whether training uses it (only
    # with AVX512-BF16 or AMX), since fp32 steps are several times slower than native bf16 ones.
    from cuvee import doctor
    from cuvee.train import throughput

    monkeypatch.setattr(throughput, "bf16_supported", lambda device: native)
    finding = doctor.check_torch(load_settings())
    assert finding.details["cpu_bf16_native"] is native
    assert finding.details["cpu_train_precision"] == ("bf16" if native else "fp32")
    assert ("trains in fp32 on the CPU (no native bf16" in finding.summary) is not native
