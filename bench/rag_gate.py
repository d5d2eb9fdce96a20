"""How far can `cuvee ask`'s gate go? The trade-off between answering and abstaining that the
features of a window allow, on the dev half of the shipped evaluation set, with no model.

The gate decides whether the best window of the retrieved chunks answers or the answer is an
abstention. Issue 17 asks for accuracy >= 0.70 on answerable questions together with abstention
recall >= 0.85 at abstention precision >= 0.80. This bench asks whether any gate over the
features the answerer reads (the question's coverage, the embedder's similarity, the type
asked, the names missing, the ranker's score) can meet that, on the half the rules were tuned
on (so every figure here is optimistic for the held-out half):

- ``shipped``: the gate in the code (``Candidate.answers``, the best such window by score);
- ``thresholds``: the same rule with every pair of coverage / similarity thresholds, and a
  threshold on the ranker's score of the best window, with or without the rule that the
  window holds the question's names and the type it asks for;
- ``learned``: a logistic model of "the best window answers right" over the best window's and
  the question's features, cross-validated over five folds by document (a document's questions
  are never both fitted and judged), its probability threshold swept.

For each family the frontier is printed: at each abstention recall reached, the best accuracy
and its abstention precision. The window quoted is widened for list questions as `cuvee ask`
does, and scored with `cuvee docs eval`'s rule (the gold answer in it as whole words).

    python bench/rag_gate.py [--l2 1.0]

The last line printed is one JSON object: the shipped gate's figures, and per family the best
accuracy with abstention recall >= 0.85, the best abstention recall with abstention precision
>= 0.80, and whether any setting meets the issue's three goals together."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from machine import describe
from rag_fit import logistic

from cuvee.docs import evaluate, extract, index
from cuvee.docs.embedders import open_backend
from cuvee.docs.evalset import EVALSET
from cuvee.docs.ingest import ingest
from cuvee.docs.retrieval import retrieve

KINDS = (None, "number", "date", "name", "yesno")
GOAL = {"accuracy": 0.70, "abstention_recall": 0.85, "abstention_precision": 0.80}


def collect(home: Path) -> list[dict]:
    """Per dev question: whether it is answerable, its document, and every window of its five
    retrieved chunks (all embedded), each with whether it holds a gold answer when quoted."""
    backend = open_backend(None)
    collection = index.create(home, "evalset", backend.identity, backend.dim)
    ingest(collection, backend, [EVALSET / "docs"])
    out = []
    for item in evaluate.load_qa(EVALSET / "qa.jsonl"):
        if item.split != "dev":
            continue
        hits = retrieve(collection, backend, item.question, 5)
        found = extract.candidates(
            item.question, hits, backend.embed, collection.document_text, every_window=True
        )
        windows = []
        for c in found:
            quoted = extract.widen(item.question, c, hits[c.hit].text)
            held = [evaluate.contains_answer(quoted.text, a) for a in item.answers]
            right = item.answerable and (all(held) if item.require_all else any(held))
            windows.append({"c": c, "right": right})
        out.append(
            {
                "question": item.question,
                "answerable": item.answerable,
                "doc": item.docs[0] if item.docs else item.question,
                "windows": windows,
            }
        )
    return out


def figures(questions: list[dict], chosen: list[dict | None]) -> dict:
    """Accuracy on answerable questions and abstention precision / recall, for the window
    each question answers with (``None``: an abstention)."""
    answerable = [q for q in questions if q["answerable"]]
    right = sum(1 for q, w in zip(questions, chosen, strict=True) if w and w["right"])
    abstained = [q for q, w in zip(questions, chosen, strict=True) if w is None]
    good = sum(1 for q in abstained if not q["answerable"])
    unanswerable = len(questions) - len(answerable)
    return {
        "accuracy": round(right / len(answerable), 3),
        "abstention_recall": round(good / unanswerable, 3),
        "abstention_precision": round(good / len(abstained), 3) if abstained else 0.0,
    }


def best_window(windows: list[dict], gated: bool) -> dict | None:
    """The best-scored window, among those holding the question's names and type if gated."""
    pool = [w for w in windows if not gated or (not w["c"].missing and w["c"].typed)]
    return max(pool, key=lambda w: w["c"].score) if pool else None


def threshold_settings(questions: list[dict]) -> list[dict]:
    rows = []
    for cov in np.arange(0.2, 1.001, 0.05):
        for sim in np.arange(0.3, 1.001, 0.025):
            chosen = []
            for q in questions:
                pool = [
                    w
                    for w in q["windows"]
                    if not w["c"].missing
                    and w["c"].typed
                    and (w["c"].coverage >= cov or w["c"].similarity >= sim)
                ]
                chosen.append(max(pool, key=lambda w: w["c"].score) if pool else None)
            rows.append({**figures(questions, chosen), "coverage": cov, "similarity": sim})
    for gated in (True, False):
        best = [best_window(q["windows"], gated) for q in questions]
        for t in np.arange(-2.0, 8.0, 0.1):
            chosen = [w if w and w["c"].score >= t else None for w in best]
            rows.append({**figures(questions, chosen), "score_at_least": t, "gated": gated})
    return rows


def gate_features(q: dict) -> list[float]:
    windows = q["windows"]
    best = best_window(windows, True) or best_window(windows, False)
    c = best["c"]
    sims = [*sorted((w["c"].similarity for w in windows), reverse=True), 0.0, 0.0]
    scores = [*sorted((w["c"].score for w in windows), reverse=True), 0.0, 0.0]
    eligible = sum(1 for w in windows if not w["c"].missing and w["c"].typed)
    kind = extract.answer_type(q["question"])
    return [
        c.coverage,
        c.similarity,
        float(c.typed),
        float(bool(c.missing)),
        float(c.in_window),
        float(c.counted),
        c.score / 10,
        float(eligible > 0),
        eligible / 10,
        sims[0],
        sims[0] - sims[1],
        (scores[0] - scores[1]) / 10,
        max(w["c"].coverage for w in windows),
        float(extract.language(q["question"]) == "fr"),
        *[float(kind == k) for k in KINDS],
    ]


def learned_settings(questions: list[dict], l2: float, folds: int) -> list[dict]:
    usable = [q for q in questions if q["windows"]]
    x = np.array([gate_features(q) for q in usable])
    best = [best_window(q["windows"], True) or best_window(q["windows"], False) for q in usable]
    y = np.array([float(w["right"]) for w in best])
    x = (x - x.mean(0)) / (x.std(0) + 1e-9)
    docs = sorted({q["doc"] for q in usable})
    fold = np.array([docs.index(q["doc"]) % folds for q in usable])
    p = np.zeros(len(usable))
    for k in range(folds):
        w = logistic(x[fold != k], y[fold != k], l2)
        test = x[fold == k]
        p[fold == k] = 1 / (1 + np.exp(-(np.hstack([test, np.ones((len(test), 1))]) @ w)))
    probability = {id(q): float(v) for q, v in zip(usable, p, strict=True)}
    chosen_of = dict(zip(map(id, usable), best, strict=True))
    rows = []
    for t in sorted({0.0, 1.01, *probability.values()}):
        chosen = [
            chosen_of[id(q)] if q["windows"] and probability[id(q)] >= t else None
            for q in questions
        ]
        rows.append({**figures(questions, chosen), "probability_at_least": round(t, 3)})
    return rows


def frontier(rows: list[dict]) -> list[dict]:
    """At each abstention recall reached, the setting with the best accuracy (then precision)."""
    best: dict[float, dict] = {}
    for r in rows:
        k = r["abstention_recall"]
        if k not in best or (r["accuracy"], r["abstention_precision"]) > (
            best[k]["accuracy"],
            best[k]["abstention_precision"],
        ):
            best[k] = r
    return [best[k] for k in sorted(best)]


def summary(rows: list[dict]) -> dict:
    high_recall = [r for r in rows if r["abstention_recall"] >= GOAL["abstention_recall"]]
    precise = [r for r in rows if r["abstention_precision"] >= GOAL["abstention_precision"]]
    meets = [r for r in high_recall if r in precise and r["accuracy"] >= GOAL["accuracy"]]
    return {
        "accuracy_at_recall_85": max((r["accuracy"] for r in high_recall), default=None),
        "recall_at_precision_80": max((r["abstention_recall"] for r in precise), default=None),
        "settings": len(rows),
        "meets_goals": len(meets),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--l2", type=float, default=1.0, help="the learned gate's L2 penalty")
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    machine = describe()
    with tempfile.TemporaryDirectory(prefix="rag-gate-") as work:
        questions = collect(Path(work))
    shipped = figures(
        questions,
        [
            next((w for w in q["windows"] if w["c"].answers), None)  # candidates() order
            for q in questions
        ],
    )
    families = {
        "thresholds": threshold_settings(questions),
        "learned": learned_settings(questions, args.l2, args.folds),
    }
    answerable = sum(q["answerable"] for q in questions)
    print(f"dev half: {answerable} answerable, {len(questions) - answerable} unanswerable")
    print(f"shipped gate: {shipped}")
    result = {"bench": "rag_gate", "split": "dev", "shipped": shipped, "goal": GOAL}
    for name, rows in families.items():
        print(f"{name}: the best accuracy at each abstention recall")
        for r in frontier(rows):
            print(
                f"  recall {r['abstention_recall']:.3f}  accuracy {r['accuracy']:.3f}  "
                f"abstention precision {r['abstention_precision']:.3f}"
            )
        result[name] = summary(rows)
        print(f"  {result[name]}")
    result["goal_reachable"] = any(result[n]["meets_goals"] for n in families)
    result["cpu"] = machine.get("cpu")
    print(json.dumps(result))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
