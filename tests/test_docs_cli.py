"""`cuvee docs` and `cuvee ask` from the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from docs_fakes import SAMPLE, HashingBackend, Scripted, copy_sample
from helpers import run_cli, store_tiny


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return copy_sample(tmp_path / "handbook")


@pytest.fixture(autouse=True)
def hashing(monkeypatch: pytest.MonkeyPatch) -> HashingBackend:
    backend = HashingBackend()
    monkeypatch.setattr("cuvee.docs.embedders.open_backend", lambda spec: backend)
    return backend


def scripted(monkeypatch: pytest.MonkeyPatch, answer: str) -> Scripted:
    generate = Scripted(answer)
    closed: list[bool] = []

    def fake_open(settings, model, reporter, threads=None, parallel=1):
        return model or "scripted", generate, lambda: closed.append(True)

    monkeypatch.setattr("cuvee.docs.generate.open_generator", fake_open)
    generate.closed = closed
    return generate


def test_add_list_show_sync_and_rm(capsys, folder: Path, isolated_home: Path) -> None:
    code, out, err = run_cli(capsys, "docs", "add", "hb", str(folder), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert len(report["added"]) == 6 and report["chunks_embedded"] > 6
    code, out, _ = run_cli(capsys, "docs", "add", "hb", str(folder), "--json")
    assert json.loads(out)["unchanged"] == 6 and json.loads(out)["chunks_embedded"] == 0

    code, out, _ = run_cli(capsys, "docs", "list", "--json")
    (listed,) = json.loads(out)
    assert listed["name"] == "hb" and listed["documents"] == 6
    code, out, _ = run_cli(capsys, "docs", "show", "hb", "--json")
    shown = json.loads(out)
    assert shown["embedding_model"] == "hashing-test@1" and len(shown["documents_list"]) == 6

    (folder / "expenses.md").unlink()
    code, out, _ = run_cli(capsys, "docs", "sync", "hb", str(folder), "--json")
    assert code == 0 and json.loads(out)["removed"] == [str(folder / "expenses.md")]

    code, out, _ = run_cli(capsys, "docs", "rm", "hb", "security.txt")
    assert code == 0 and "removed" in out
    code, out, _ = run_cli(capsys, "docs", "list", "hb", "--json")
    assert {Path(d["path"]).name for d in json.loads(out)} == {
        "leave-policy.md",
        "onboarding.md",
        "product-faq.html",
        "teletravail.md",
    }
    code, out, _ = run_cli(capsys, "docs", "rm", "hb", "--yes")
    assert code == 0 and not (isolated_home / "docs" / "hb.sqlite").exists()


def test_bad_input_leaves_nothing_behind(capsys, tmp_path: Path, isolated_home: Path) -> None:
    code, _, err = run_cli(capsys, "docs", "add", "hb", str(tmp_path / "missing"))
    assert code == 1 and "no such file or folder" in err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.pdf").write_bytes(b"not a pdf")
    code, _, err = run_cli(capsys, "docs", "add", "hb", str(bad))
    assert code == 1 and "broken.pdf" in err and "--skip-errors" in err
    assert not (isolated_home / "docs" / "hb.sqlite").exists()
    code, _, err = run_cli(capsys, "docs", "sync", "nothere", str(bad))
    assert code == 1 and "no collection named 'nothere'" in err
    code, _, err = run_cli(capsys, "docs", "add", "hb", str(bad), "--chunk-size", "10")
    assert code != 0 and "chunk size" in err
    code, _, err = run_cli(capsys, "ask", "ghost", "anything?")
    assert code == 1 and "no collection named 'ghost'" in err


def test_ask_prints_the_checked_answer_and_json(capsys, folder, monkeypatch) -> None:
    assert run_cli(capsys, "docs", "add", "hb", str(folder))[0] == 0
    generate = scripted(
        monkeypatch,
        "Every full-time employee receives 27 days of paid annual leave per calendar year. "
        "Staff also get a free car.",
    )
    question = "How many days of paid annual leave does a full-time employee get?"
    code, out, err = run_cli(capsys, "ask", "hb", question)
    assert code == 0, err
    assert out.startswith("Every full-time employee receives 27 days") and "[1]" in out
    assert "free car" not in out and "1 unsupported sentence(s) dropped" in err
    assert generate.closed == [True]

    code, out, _ = run_cli(capsys, "ask", "hb", question, "--json", "--k", "3")
    result = json.loads(out)
    assert result["abstained"] is False and len(result["retrieval"]) == 3
    (cite,) = result["citations"]
    source = Path(cite["doc"]).read_text(encoding="utf-8")
    assert source[cite["start"] : cite["end"]] == cite["quote"]
    # with 3 passages the best window is both sentences of the paragraph, and the model said
    # only the first: the window is quoted whole instead (docs.answer._holds)
    assert result["wording"] == "quote" and cite["quote"].endswith("contracted hours.")
    verdicts = [s["verdict"] for s in result["sentences"]]
    assert verdicts == ["not_used", "unsupported", "supported"]


def test_docs_eval_prints_metrics(capsys, folder, monkeypatch) -> None:
    assert run_cli(capsys, "docs", "add", "hb", str(folder))[0] == 0
    scripted(monkeypatch, "The documents do not say.")
    qa = Path(str(SAMPLE / "qa.jsonl"))
    args = ["docs", "eval", "hb", str(qa), "--limit", "6", "--baselines", "extractive"]
    code, out, err = run_cli(capsys, *args, "--json")
    assert code == 0, err
    metrics = json.loads(out)["metrics"]
    assert set(metrics) == {"cuvee", "extractive"}
    ours = metrics["cuvee"]["all"]
    assert ours["questions"] == 6 and ours["retrieval_hit_at_5"] is not None
    # a model that always abstains: the questions the passages answer are answered by
    # their best passage, quoted; answer rate, accuracy and abstention figures side by side
    assert ours["quote_share"] in (1.0, None)
    for key in ("answer_rate", "answer_accuracy", "answer_precision", "abstention_recall"):
        assert key in ours and key in metrics["extractive"]["all"]
    assert metrics["extractive"]["all"]["answer_rate"] == 1.0
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "cuvee extractive" in " ".join(out.split()) and "answer_precision" in out
    code, _, err = run_cli(capsys, "docs", "eval", "hb", str(qa), "--baselines", "oracle")
    assert code == 2 and "not a baseline" in err


@pytest.fixture
def long_context_tiny(tiny_spm_gemma_dir: Path, tmp_path: Path) -> Path:
    """The tiny Gemma with a 4096-token context (its weights do not depend on it)."""
    target = tmp_path / "tiny-long"
    shutil.copytree(tiny_spm_gemma_dir, target)
    config = json.loads((target / "config.json").read_text())
    config["max_position_embeddings"] = 4096
    (target / "config.json").write_text(json.dumps(config))
    return target


def test_a_context_too_small_for_any_passage_is_a_clear_error(
    capsys, folder, tiny_spm_gemma_dir: Path
) -> None:
    pytest.importorskip("llama_cpp")
    store_tiny(tiny_spm_gemma_dir, name="short")
    assert run_cli(capsys, "docs", "add", "hb", str(folder))[0] == 0
    code, _, err = run_cli(capsys, "ask", "hb", "How long is probation?", "--model", "short")
    assert code == 1 and "context of 256 tokens" in err and "--chunk-size" in err


def test_ask_with_a_real_tiny_model_never_presents_noise(
    capsys, folder, long_context_tiny: Path
) -> None:
    """A random tiny model through the llama.cpp engine: whatever it writes is checked, and
    noise is never presented as an answer: the answer is the passage that answers, quoted."""
    pytest.importorskip("llama_cpp")
    store_tiny(long_context_tiny, name="tg")
    assert run_cli(capsys, "docs", "add", "hb", str(folder))[0] == 0
    code, out, err = run_cli(
        capsys, "ask", "hb", "How long is the probation period?", "--model", "tg", "--json"
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["model"] == "tg" and result["generated"] != ""  # the model did write
    assert result["abstained"] is False and result["wording"] == "quote"
    (cite,) = result["citations"]
    assert "probation" in cite["quote"].lower()
    source = Path(cite["doc"]).read_text(encoding="utf-8")
    assert source[cite["start"] : cite["end"]] == cite["quote"]


def test_a_folder_with_nothing_to_index_creates_no_collection(
    capsys, tmp_path: Path, isolated_home: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.xlsx").write_bytes(b"x")
    code, _, err = run_cli(capsys, "docs", "add", "hb", str(empty))
    assert code == 1 and "nothing to index" in err
    assert not (isolated_home / "docs" / "hb.sqlite").exists()


def test_chunking_settings_apply_at_creation_only(capsys, folder: Path) -> None:
    assert run_cli(capsys, "docs", "add", "hb", str(folder), "--overlap", "100")[0] == 0
    code, _, err = run_cli(capsys, "docs", "add", "hb", str(folder), "--overlap", "120")
    assert code == 2 and "--overlap 100" in err
