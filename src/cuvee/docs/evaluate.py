"""`cuvee docs eval`: how well a collection answers a QA file.

A QA file is JSON Lines, one question per line::

    {"id": "leave-days", "question": "How many days ...?", "answers": ["27 days"],
     "docs": ["leave-policy.md"]}

``answers`` are gold strings (an answer is correct when it contains one, case and accents
folded); ``docs`` name the documents that hold the answer (a path suffix such as a file name).
A question with no ``answers`` is unanswerable from the collection: the right output is an
abstention.

Metrics: retrieval hit@k and MRR (first chunk of a gold document) over answerable questions;
answer accuracy over answerable questions (an abstention counts as wrong); citation validity
(each returned citation's quote equals the stored document text at its offsets); the share of
unsupported sentences among those generated and among those returned; abstention precision and
recall (an abstention is correct on an unanswerable question)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from cuvee.docs.answer import AskResult, Generate, ask
from cuvee.docs.embedders import Backend
from cuvee.docs.index import Collection
from cuvee.docs.textnorm import words
from cuvee.errors import DocsError
from cuvee.jsonl import read_objects
from cuvee.progress import Reporter, SilentReporter


@dataclass(frozen=True)
class QAItem:
    id: str
    question: str
    answers: list[str] = field(default_factory=list)
    docs: list[str] = field(default_factory=list)

    @property
    def answerable(self) -> bool:
        return bool(self.answers)


def load_qa(path: Path) -> list[QAItem]:
    if not path.is_file():
        raise DocsError(f"{path}: no such QA file")
    items: list[QAItem] = []
    seen: set[str] = set()
    for number, row in read_objects(path, DocsError, "QA file"):
        where = f"{path}:{number}"
        question = row.get("question")
        if not isinstance(question, str) or not question.strip():
            raise DocsError(f"{where}: 'question' must be a non-empty string")
        answers = row.get("answers", [])
        docs = row.get("docs", [])
        for key, value in (("answers", answers), ("docs", docs)):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise DocsError(f"{where}: '{key}' must be a list of strings")
        if answers and not docs:
            raise DocsError(f"{where}: an answerable question needs its gold 'docs'")
        item_id = str(row.get("id", number))
        if item_id in seen:
            raise DocsError(f"{where}: duplicate id {item_id!r}")
        seen.add(item_id)
        items.append(QAItem(item_id, question, answers, docs))
    if not items:
        raise DocsError(f"{path}: no questions")
    return items


def _is_gold(doc_path: str, gold: list[str]) -> bool:
    parts = Path(doc_path).parts
    return any(tuple(Path(g).parts) == parts[-len(Path(g).parts) :] for g in gold if Path(g).parts)


_MARKS = re.compile(r"\[(?:\d+(?:\s*[,;]\s*\d+)*|unsupported)\]")


def contains_answer(answer: str, gold: str) -> bool:
    """Whether ``gold`` occurs in ``answer`` as whole words (case, accents and number grouping
    folded; citation marks removed first, so "[2]" never matches a gold "2")."""
    text = " ".join(words(_MARKS.sub(" ", answer)))
    wanted = " ".join(words(gold))
    return bool(wanted) and re.search(rf"(?<!\S){re.escape(wanted)}(?!\S)", text) is not None


def _correct(result: AskResult, item: QAItem) -> bool:
    return not result.abstained and any(contains_answer(result.answer, a) for a in item.answers)


def score(collection: Collection, items: list[QAItem], results: list[AskResult], k: int) -> dict:
    answerable = [(i, r) for i, r in zip(items, results, strict=True) if i.answerable]
    unanswerable = [(i, r) for i, r in zip(items, results, strict=True) if not i.answerable]

    hits, reciprocal = 0, 0.0
    for item, result in answerable:
        ranks = [n for n, h in enumerate(result.retrieval[:k], 1) if _is_gold(h.doc, item.docs)]
        if ranks:
            hits += 1
            reciprocal += 1.0 / ranks[0]

    texts: dict[int, str] = {}
    citations = valid = 0
    generated = generated_unsupported = returned = returned_unsupported = 0
    for result in results:
        claims = [s for s in result.sentences if s.verdict != "no_claim"]
        generated += len(claims)
        generated_unsupported += sum(1 for s in claims if s.verdict == "unsupported")
        if result.abstained:
            continue
        returned += len(result.citations) + result.answer.count("[unsupported]")
        returned_unsupported += result.answer.count("[unsupported]")
        for cite in result.citations:
            citations += 1
            doc_id = _doc_id(collection, cite.doc)
            if doc_id is not None:
                text = texts.setdefault(doc_id, collection.document_text(doc_id))
                valid += int(text[cite.start : cite.end] == cite.quote and cite.quote != "")

    abstained = [(i, r) for i, r in zip(items, results, strict=True) if r.abstained]
    correct_abstentions = sum(1 for i, _ in abstained if not i.answerable)

    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 4) if b else None

    return {
        "questions": len(items),
        "answerable": len(answerable),
        "unanswerable": len(unanswerable),
        "k": k,
        f"retrieval_hit_at_{k}": ratio(hits, len(answerable)),
        "retrieval_mrr": ratio(reciprocal, len(answerable)),
        "answer_accuracy": ratio(sum(_correct(r, i) for i, r in answerable), len(answerable)),
        "citations": citations,
        "citation_validity": ratio(valid, citations),
        "unsupported_rate_generated": ratio(generated_unsupported, generated),
        "unsupported_rate_returned": ratio(returned_unsupported, returned),
        "abstentions": len(abstained),
        "abstention_precision": ratio(correct_abstentions, len(abstained)),
        "abstention_recall": ratio(correct_abstentions, len(unanswerable)),
    }


def _doc_id(collection: Collection, path: str) -> int | None:
    row = collection.db.execute("SELECT id FROM documents WHERE path = ?", (path,)).fetchone()
    return row[0] if row else None


def run(
    collection: Collection,
    backend: Backend,
    items: list[QAItem],
    generate: Generate,
    *,
    k: int = 5,
    reporter: Reporter | None = None,
    **ask_options,
) -> tuple[dict, list[dict]]:
    """(metrics, per-question records)."""
    reporter = reporter or SilentReporter()
    results: list[AskResult] = []
    with reporter.items("answering", len(items)) as advance:
        for item in items:
            results.append(ask(collection, backend, item.question, generate, k=k, **ask_options))
            advance(1)
    metrics = score(collection, items, results, k)
    records = [
        {
            "id": item.id,
            "question": item.question,
            "answerable": item.answerable,
            "abstained": result.abstained,
            "correct": _correct(result, item) if item.answerable else result.abstained,
            "answer": result.answer,
            "generated": result.generated,
            "top_doc": result.retrieval[0].doc if result.retrieval else None,
        }
        for item, result in zip(items, results, strict=True)
    ]
    return metrics, records
