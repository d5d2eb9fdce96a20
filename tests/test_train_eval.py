"""`cuvee train --eval-suite`: base and result evaluated when training ends, recorded in the
manifest and the model card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import run_cli, store_tiny, write_data

pytest.importorskip("llama_cpp")


def test_train_evaluates_base_and_result_into_manifest_and_card(
    capsys, tiny_spm_gemma_dir: Path, tmp_path: Path
) -> None:
    _, store = store_tiny(tiny_spm_gemma_dir, name="tb")
    data = write_data(tmp_path / "train.jsonl")
    args = ["train", "--base", "tb", "--data", str(data), "--name", "te", "--max-steps", "2"]
    args += ["--seq-len", "48", "--batch-size", "2", "--eval-split", "none"]
    code, out, err = run_cli(capsys, *args, "--eval-suite", "tasks", "--eval-limit", "2", "--json")
    assert code == 0, err
    summary = json.loads(out)
    evaluation = summary["evaluation"]
    assert evaluation["models"] == ["tb", "te"] and evaluation["limit"] == 2
    metrics = evaluation["suites"]["tasks"]["metrics"]
    assert set(metrics) == {"tb", "te"} and metrics["te"]  # numbers for both models
    manifest = store.get("te").manifest.model_dump()
    assert manifest["evaluation"] == evaluation
    card = (store.get("te").path / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "## Evaluation" in card and "| metric | tb | te |" in card
    assert card.index("## Evaluation") > card.index("# ")  # appended after the card's body


def test_an_unknown_suite_fails_before_training(
    capsys, tiny_spm_gemma_dir: Path, tmp_path: Path, isolated_home: Path
) -> None:
    store_tiny(tiny_spm_gemma_dir, name="tb")
    data = write_data(tmp_path / "train.jsonl")
    args = ["train", "--base", "tb", "--data", str(data), "--name", "te", "--max-steps", "2"]
    code, _, err = run_cli(capsys, *args, "--eval-suite", "instructionz")
    assert code != 0 and "instructionz" in err
    assert not (isolated_home / "runs").exists() or not any((isolated_home / "runs").iterdir())
