"""`cuvee docs eval`: how well a collection answers a QA file.

A QA file is JSON Lines, one question per line::

    {"id": "leave-days", "question": "How many days ...?", "answers": ["27 days"],
     "docs": ["leave-policy.md"], "split": "heldout"}

``answers`` are gold strings (an answer is correct when it contains one, case and accents
folded; all of them with ``"require_all": true``, for lists); ``docs`` name the documents that
hold the answer (a path suffix such as a file name). A question with no ``answers`` is
unanswerable from the collection: the right output is an abstention. ``split`` (``dev`` or
``heldout``), ``lang`` and ``kind`` are optional labels: figures are reported per split, so
that a threshold tuned on ``dev`` is judged on ``heldout``.

Metrics, none of which a system that answers nothing (or everything) can max out alone:

- ``answer_rate``: questions answered, of all; ``answer_accuracy``: correct answers of the
  answerable questions (an abstention counts as wrong); ``answer_precision``: correct answers
  of the answers given (an answer to an unanswerable question is wrong);
- ``abstention_precision`` (abstentions on unanswerable questions, of all abstentions) and
  ``abstention_recall`` (of the unanswerable questions);
- ``right_doc_cited``: answerable questions whose answer cites a gold document;
- ``citation_validity``: citations whose quote equals the stored text at its offsets;
- ``sentences_dropped``: generated sentences the check dropped, of all it checked, beside
  ``unsupported_rate_returned`` (what reached the user unsupported: 0 unless kept and marked);
- ``quote_share``: answers that are a source's sentence quoted verbatim rather than the
  model's wording; ``language_match``: outputs in the question's language;
- retrieval hit@k and MRR (first chunk of a gold document) over answerable questions."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from cuvee.docs.answer import AskResult, Generate, ask
from cuvee.docs.embedders import Backend
from cuvee.docs.extract import language
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
    require_all: bool = False
    split: str | None = None
    lang: str | None = None
    kind: str | None = None

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
        labels = {}
        for key in ("split", "lang", "kind"):
            value = row.get(key)
            if value is not None and not isinstance(value, str):
                raise DocsError(f"{where}: '{key}' must be a string")
            labels[key] = value
        require_all = row.get("require_all", False)
        if not isinstance(require_all, bool):
            raise DocsError(f"{where}: 'require_all' must be true or false")
        items.append(QAItem(item_id, question, answers, docs, require_all, **labels))
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
    if result.abstained or not item.answers:
        return False
    found = [contains_answer(result.answer, a) for a in item.answers]
    return all(found) if item.require_all else any(found)


# The figures reported side by side wherever answers are scored (docs eval's table, the
# grounded eval suite, bench/rag_bench.py), none of which doing nothing would max out alone.
HEADLINE = (
    "answer_rate",
    "answer_accuracy",
    "answer_precision",
    "abstention_precision",
    "abstention_recall",
    "right_doc_cited",
    "citation_validity",
    "sentences_dropped",
    "unsupported_rate_returned",
    "quote_share",
    "language_match",
)


def score(collection: Collection, items: list[QAItem], results: list[AskResult], k: int) -> dict:
    pairs = list(zip(items, results, strict=True))
    answerable = [(i, r) for i, r in pairs if i.answerable]
    unanswerable = [(i, r) for i, r in pairs if not i.answerable]

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
        generated += result.checked
        generated_unsupported += result.dropped
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

    answered = [(i, r) for i, r in pairs if not r.abstained]
    abstained = [(i, r) for i, r in pairs if r.abstained]
    correct = sum(_correct(r, i) for i, r in answerable)
    right_doc = sum(
        1
        for i, r in answerable
        if not r.abstained and any(_is_gold(c.doc, i.docs) for c in r.citations)
    )
    quotes = sum(1 for _, r in answered if r.wording == "quote")
    same_language = sum(
        1 for i, r in pairs if language(_MARKS.sub(" ", r.answer)) == language(i.question)
    )

    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 4) if b else None

    seconds = sorted(r.timings["total_ms"] / 1000 for r in results if "total_ms" in r.timings)
    return {
        "questions": len(items),
        "answerable": len(answerable),
        "unanswerable": len(unanswerable),
        "k": k,
        "answer_rate": ratio(len(answered), len(items)),
        "answer_accuracy": ratio(correct, len(answerable)),
        "answer_precision": ratio(correct, len(answered)),
        "abstentions": len(abstained),
        "abstention_precision": ratio(
            sum(1 for i, _ in abstained if not i.answerable), len(abstained)
        ),
        "abstention_recall": ratio(
            sum(1 for _, r in unanswerable if r.abstained), len(unanswerable)
        ),
        "right_doc_cited": ratio(right_doc, len(answerable)),
        "citations": citations,
        "citation_validity": ratio(valid, citations),
        "sentences_dropped": ratio(generated_unsupported, generated),
        "unsupported_rate_returned": ratio(returned_unsupported, returned),
        "quote_share": ratio(quotes, len(answered)),
        "language_match": ratio(same_language, len(items)),
        f"retrieval_hit_at_{k}": ratio(hits, len(answerable)),
        "retrieval_mrr": ratio(reciprocal, len(answerable)),
        "ask_p50_s": round(seconds[(len(seconds) - 1) // 2], 3) if seconds else None,
    }


def score_splits(
    collection: Collection, items: list[QAItem], results: list[AskResult], k: int
) -> dict:
    """``score`` over all the questions, and over each ``split`` the file labels."""
    out = {"all": score(collection, items, results, k)}
    for split in sorted({i.split for i in items if i.split}):
        chosen = [(i, r) for i, r in zip(items, results, strict=True) if i.split == split]
        out[split] = score(collection, [i for i, _ in chosen], [r for _, r in chosen], k)
    return out


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
    baselines: tuple[str, ...] = (),
    **ask_options,
) -> tuple[dict, list[dict]]:
    """(metrics, per-question records). Metrics map each system (``cuvee``, then the
    ``baselines`` by name, on the same retrieval) to its figures over all the questions and
    over each split."""
    from cuvee.docs.baselines import BASELINES
    from cuvee.docs.retrieval import retrieve

    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise DocsError(f"unknown baseline {unknown[0]!r} (known: {', '.join(BASELINES)})")
    reporter = reporter or SilentReporter()
    results: list[AskResult] = []
    others: dict[str, list[AskResult]] = {name: [] for name in baselines}
    with reporter.items("answering", len(items)) as advance:
        for item in items:
            result = ask(collection, backend, item.question, generate, k=k, **ask_options)
            results.append(result)
            for name in baselines:
                hits = retrieve(collection, backend, item.question, k)
                others[name].append(BASELINES[name](item.question, hits, generate, collection.name))
            advance(1)
    metrics = {"cuvee": score_splits(collection, items, results, k)}
    for name, got in others.items():
        metrics[name] = score_splits(collection, items, got, k)
    records = [
        {
            "id": item.id,
            "split": item.split,
            "question": item.question,
            "answerable": item.answerable,
            "abstained": result.abstained,
            "correct": _correct(result, item) if item.answerable else result.abstained,
            "answer": result.answer,
            "wording": result.wording,
            "abstain_reason": result.reason,
            "generated": result.generated,
            "top_doc": result.retrieval[0].doc if result.retrieval else None,
            **{
                f"{name}_correct": (_correct(got[n], item) if item.answerable else got[n].abstained)
                for name, got in others.items()
            },
        }
        for n, (item, result) in enumerate(zip(items, results, strict=True))
    ]
    return metrics, records
