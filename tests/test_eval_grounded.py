"""The `grounded` eval suite: questions over the sample documents, answers verified and scored
as `cuvee docs eval` does."""

from __future__ import annotations

import re

import pytest

from cuvee.eval.suites import get_suite
from docs_fakes import HashingBackend


@pytest.fixture(autouse=True)
def hashing(monkeypatch: pytest.MonkeyPatch) -> HashingBackend:
    backend = HashingBackend()
    monkeypatch.setattr("cuvee.docs.embedders.open_backend", lambda spec: backend)
    return backend


def _oracle(item) -> str:
    """Copies the first source sentence holding a gold answer, cited; abstains otherwise."""
    for number, hit in enumerate(item.data["hits"], 1):
        for sentence in re.split(r"(?<=\.)\s+", hit["text"]):
            if any(a in sentence for a in item.data["answers"]):
                return f"{sentence.strip()} [{number}]"
    return "The documents do not say."


def test_grounded_items_carry_the_ask_prompt_and_score_like_docs_eval(hashing) -> None:
    suite = get_suite("grounded")
    items = suite.load(None)
    assert len(items) >= 30 and all(len(i.data["hits"]) == 5 for i in items)
    first = items[0]
    assert first.data["question"] in first.prompt and "[1]" in first.prompt
    # the index is built once: loading again embeds nothing new
    hashing.embedded.clear()
    again = suite.load(None)
    assert [i.prompt for i in again] == [i.prompt for i in items]
    assert len(hashing.embedded) == len(items)  # only the questions

    good = suite.score(items, [_oracle(i) for i in items])
    assert good.metrics["answer_accuracy"] >= 0.9
    assert good.metrics["abstention_recall"] == 1.0
    assert good.metrics["citation_validity"] == 1.0
    assert good.counts["questions"] == len(items)

    silent = suite.score(items, ["I am not sure." for _ in items])
    assert silent.metrics["answer_accuracy"] == 0.0
    assert "citation_validity" not in silent.metrics  # no citation to check: not reported as 1
    made_up = suite.score(items, ["The answer is 99 percent, says Bob Smith [1]." for _ in items])
    assert made_up.metrics["answer_accuracy"] == 0.0
    assert made_up.metrics["unsupported_rate_generated"] == 1.0


def test_the_grounded_suite_resolves_by_name_under_the_given_home(tmp_path) -> None:
    from dataclasses import replace

    from cuvee.config import load_settings
    from cuvee.eval.suites import resolve_suite

    settings = replace(load_settings(), home=tmp_path / "elsewhere")
    resolved = resolve_suite("grounded", settings)
    assert resolved.packaged and len(resolved.items) >= 30
    assert (tmp_path / "elsewhere" / "eval" / "grounded" / "docs").is_dir()
