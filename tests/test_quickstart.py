"""`cuvee quickstart` end to end on a tiny base: every step runs once, then is skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from docs_fakes import HashingBackend
from helpers import run_cli, store_tiny

pytest.importorskip("llama_cpp")


@pytest.fixture
def hashing(monkeypatch: pytest.MonkeyPatch) -> HashingBackend:
    backend = HashingBackend()
    monkeypatch.setattr("cuvee.docs.embedders.open_backend", lambda spec: backend)
    return backend


def test_quickstart_runs_every_step_then_skips_them(
    capsys, tiny_spm_gemma_dir: Path, hashing: HashingBackend, isolated_home: Path
) -> None:
    _, store = store_tiny(tiny_spm_gemma_dir, name="tinybase")
    args = ["quickstart", "--base", "tinybase", "--name", "qs", "--time-budget", "3s"]
    args += ["--eval-limit", "2", "--no-serve"]
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "[1/5] pull the base model: done already" in out
    assert "[2/5] fine-tune on the starter set\n" in out
    assert store.exists("qs")
    manifest = store.get("qs").manifest
    assert any(e["format"] == "gguf" and e["quantization"] == "q8_0" for e in manifest.exports)
    code, listed, _ = run_cli(capsys, "docs", "list", "--json")
    (collection,) = json.loads(listed)
    assert collection["name"] == "sample" and collection["documents"] == 6
    assert "cuvee ask sample" in out and "rag:sample" in out
    # base and tune compared on instruction following and on the starter set's held-out slice
    assert "instructions (v" in out and "tasks:starter-heldout.jsonl" in out

    hashing.embedded.clear()
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "[2/5] fine-tune on the starter set: done already (qs is in the store)" in out
    assert "[4/5] export the fine-tune to GGUF: done already" in out
    assert hashing.embedded == []  # the documents were unchanged: nothing re-embedded
    assert "all answers came from the cache" in out + err


def test_a_bad_time_budget_fails_before_anything_runs(capsys, isolated_home: Path) -> None:
    code, _, err = run_cli(capsys, "quickstart", "--time-budget", "soon", "--no-serve")
    assert code != 0 and "soon" in err
    assert not (isolated_home / "models").exists() or not any((isolated_home / "models").iterdir())


def test_quickstart_with_preference_adds_pairs_and_dpo_then_skips_them(
    capsys, tiny_spm_gemma_dir: Path, hashing: HashingBackend, isolated_home: Path
) -> None:
    _, store = store_tiny(tiny_spm_gemma_dir, name="tinybase")
    args = ["quickstart", "--base", "tinybase", "--name", "qs", "--time-budget", "3s"]
    args += ["--eval-limit", "2", "--no-serve", "--preference", "--preference-budget", "3s"]
    args += ["--pair-prompts", "3"]
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "[3/7] build preference pairs from the fine-tune's answers\n" in out
    assert "[4/7] preference-tune (DPO) the fine-tune\n" in out
    dpo = store.get("qs-dpo").manifest
    assert dpo.parent == "qs" and dpo.lineage["recipe"]["method"] == "dpo"
    assert any(e["format"] == "gguf" for e in dpo.exports)  # exported, to be served
    work = isolated_home / "quickstart"
    augment_pairs = (work / "qs-augment-pairs.jsonl").read_text().splitlines()
    assert augment_pairs and (work / "qs-pairs.jsonl").exists()
    sidecar = (work / "qs-augment-pairs.jsonl.cuvee.yaml").read_text()
    assert "Apache-2.0" in sidecar  # the starter set's licence travels to the pairs
    assert "cuvee chat qs-dpo" in out and "qs qs-dpo" in out
    # all three compared in one table
    assert "qs-dpo" in out.split("[5/7] evaluate")[1].split("[6/7]")[0]

    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "[3/7] build preference pairs from the fine-tune's answers: done already" in out
    assert "[4/7] preference-tune (DPO) the fine-tune: done already" in out
    assert "[6/7] export the fine-tune to GGUF: done already" in out


def test_a_bad_preference_budget_fails_before_anything_runs(capsys, isolated_home: Path) -> None:
    code, _, err = run_cli(
        capsys, "quickstart", "--preference", "--preference-budget", "later", "--no-serve"
    )
    assert code != 0 and "later" in err and "--preference-budget" in err
