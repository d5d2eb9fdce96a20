"""`cuvee run` and `cuvee chat` on a tiny model through the llama.cpp engine."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from helpers import run_cli, store_tiny

pytest.importorskip("llama_cpp")


@pytest.fixture
def tiny(tiny_spm_gemma_dir: Path):
    return store_tiny(tiny_spm_gemma_dir, name="tg")


def test_run_exports_a_gguf_once_and_answers_as_json(tiny, capsys) -> None:
    _, store = tiny
    code, out, err = run_cli(capsys, "run", "tg", "hello world", "--max-tokens", "5", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["model"] == "tg" and result["engine"] == "llamacpp"
    assert result["finish_reason"] in ("stop", "length")
    assert 1 <= result["usage"]["completion_tokens"] <= 5
    assert result["usage"]["prompt_tokens"] > 3  # the chat template was applied
    (exported,) = store.get("tg").manifest.exports
    assert exported["format"] == "gguf" and exported["quantization"] == "q8_0"
    # the second run reuses that export
    code, out, _ = run_cli(capsys, "run", "tg", "hello", "--max-tokens", "3", "--json", "--raw")
    assert code == 0 and len(store.get("tg").manifest.exports) == 1
    raw = json.loads(out)
    assert raw["usage"]["prompt_tokens"] < result["usage"]["prompt_tokens"]


def test_run_is_reproducible_with_a_seed_and_streams_text(tiny, capsys) -> None:
    args = ["run", "tg", "the question", "--max-tokens", "8", "--temperature", "0.9"]
    first = run_cli(capsys, *args, "--seed", "7", "--json")
    second = run_cli(capsys, *args, "--seed", "7", "--json")
    assert first[0] == 0 and json.loads(first[1])["text"] == json.loads(second[1])["text"]
    code, out, _ = run_cli(capsys, "run", "tg", "hello", "--max-tokens", "4")
    assert code == 0 and out.endswith("\n")


def test_chat_keeps_history_resets_and_exits(tiny, capsys, monkeypatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n/reset\n/what\nthe answer\n/exit\n"))
    code, out, err = run_cli(capsys, "chat", "tg", "--max-tokens", "3")
    assert code == 0, err
    assert "(conversation reset)" in err and "unknown command /what" in err
    assert out.count(">>>") >= 4


def test_a_missing_model_or_file_is_named(tiny, capsys, tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "run", "nope", "hi")
    assert code != 0 and "nope" in err
    missing = tmp_path / "missing.gguf"
    code, _, err = run_cli(capsys, "run", str(missing), "hi")
    assert code != 0 and "missing.gguf" in err
