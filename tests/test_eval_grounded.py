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
    # the index is built once: loading again embeds the questions and their passages'
    # windows, the same each time, and no chunk again
    built = len(hashing.embedded)
    hashing.embedded.clear()
    again = suite.load(None)
    assert [i.prompt for i in again] == [i.prompt for i in items]
    reloaded = len(hashing.embedded)
    hashing.embedded.clear()
    suite.load(None)
    assert len(hashing.embedded) == reloaded < built

    good = suite.score(items, [_oracle(i) for i in items])
    assert good.metrics["answer_accuracy"] >= 0.9
    assert good.metrics["abstention_recall"] == 1.0
    assert good.metrics["citation_validity"] == 1.0
    assert good.counts["questions"] == len(items)

    # the questions answered are the gate's choice, not the model's: a silent model's are
    # answered by their best passage, quoted
    silent = suite.score(items, ["I am not sure." for _ in items])
    assert silent.metrics["answer_rate"] == good.metrics["answer_rate"]
    assert silent.metrics["quote_share"] == 1.0
    made_up = suite.score(items, ["The answer is 99 percent, says Bob Smith [1]." for _ in items])
    assert made_up.metrics["sentences_dropped"] == 1.0  # every claim of it dropped
    assert not any("Bob Smith" in i["answer"] for i in made_up.items)


def test_the_grounded_suite_resolves_by_name_under_the_given_home(tmp_path) -> None:
    from dataclasses import replace

    from cuvee.config import load_settings
    from cuvee.eval.suites import resolve_suite

    settings = replace(load_settings(), home=tmp_path / "elsewhere")
    resolved = resolve_suite("grounded", settings)
    assert resolved.packaged and len(resolved.items) >= 30
    assert (tmp_path / "elsewhere" / "eval" / "grounded" / "docs").is_dir()
