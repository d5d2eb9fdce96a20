"""The document-answering evaluation set shipped in cuvee/docs/evalset: large and varied enough
to judge the answerer (both languages, every kind of question, a fifth unanswerable), split
into a dev half and a held-out half per kind, and every gold answer really in its document as
the project's own loaders read it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from cuvee.docs import loaders
from cuvee.docs.evalset import EVALSET
from cuvee.docs.evaluate import contains_answer, load_qa

KINDS = {"number", "name", "date", "yes_no", "list", "split", "paraphrase", "unanswerable"}


@pytest.fixture(scope="module")
def items():
    return load_qa(EVALSET / "qa.jsonl")


def test_the_set_is_large_and_varied(items) -> None:
    docs = [p for p in (EVALSET / "docs").rglob("*") if p.is_file()]
    assert len(docs) >= 20
    assert {p.suffix for p in docs} >= {".md", ".txt", ".html"}
    assert len(items) >= 150
    assert {i.lang for i in items} == {"en", "fr"}
    assert {i.kind for i in items} == KINDS
    unanswerable = [i for i in items if not i.answerable]
    assert len(unanswerable) >= 0.2 * len(items)
    assert all(i.kind == "unanswerable" for i in unanswerable)


def test_each_kind_and_language_has_a_dev_and_a_heldout_half(items) -> None:
    counts = Counter((i.lang, i.kind, i.split) for i in items)
    assert {i.split for i in items} == {"dev", "heldout"}
    for lang in ("en", "fr"):
        for kind in KINDS:
            dev, held = counts[(lang, kind, "dev")], counts[(lang, kind, "heldout")]
            assert dev and held and abs(dev - held) <= 2, (lang, kind, dev, held)


def test_every_gold_answer_is_in_its_gold_document(items) -> None:
    texts: dict[str, str] = {}
    for item in items:
        if not item.answerable:
            assert not item.docs
            continue
        found = []
        for doc in item.docs:
            path = EVALSET / "docs" / doc
            assert path.is_file(), f"{item.id}: no document {doc}"
            if doc not in texts:
                texts[doc] = loaders.load(path).text
            found.append(texts[doc])
        text = "\n".join(found)
        present = [contains_answer(text, a) for a in item.answers]
        assert all(present) if item.require_all else any(present), item.id


def test_questions_are_unique(items) -> None:
    questions = Counter(i.question.strip().lower() for i in items)
    assert questions.most_common(1)[0][1] == 1
    assert all(Path(d).parts[0] in ("en", "fr") for i in items for d in i.docs)
