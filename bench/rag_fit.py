"""Fit the window ranker of `cuvee ask` (cuvee.docs.extract.RANK_WEIGHTS) on the dev half of
the shipped evaluation set, and say how well it ranks there, cross-validated.

For every answerable question of the `dev` half, the windows `extract.candidates` finds in the
five retrieved chunks are labelled: does the window hold a gold answer? A logistic model over
`extract.rank_features` (L2 penalty `--l2`, fitted by Newton's method) learns which features
make a window the answering one. The figures printed:

- `cv_top1`: the share of dev questions whose first-ranked window holds the answer, with
  weights fitted on the other four of five folds (questions grouped by document, so a
  document's wording is never both fitted and judged), beside `shipped_top1` (the weights in
  the code now, on the same questions: in-sample when they came from this script) and
  `oracle` (some window holds it);
- `weights`: fitted on the whole dev half, to paste into RANK_WEIGHTS.

The held-out half is never read here; judge a new set of weights on it with
`cuvee docs eval ... --split heldout` (or bench/rag_bench.py) once, after choosing.

    python bench/rag_fit.py [--l2 1.0]

The last line printed is one JSON object with the figures."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from machine import describe

from cuvee.docs import evaluate, extract, index
from cuvee.docs.embedders import open_backend
from cuvee.docs.evalset import EVALSET
from cuvee.docs.ingest import ingest
from cuvee.docs.retrieval import retrieve


def logistic(x: np.ndarray, y: np.ndarray, l2: float, iterations: int = 50) -> np.ndarray:
    """Weights (then the bias) of an L2-penalised logistic regression, by Newton's method."""
    design = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(design.shape[1])
    penalty = l2 * np.eye(design.shape[1])
    penalty[-1, -1] = 0.0  # the bias is not shrunk
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-design @ w))
        gradient = design.T @ (p - y) + penalty @ w
        hessian = design.T @ (design * (p * (1 - p))[:, None]) + penalty
        w -= np.linalg.solve(hessian + 1e-9 * np.eye(len(w)), gradient)
    return w


def labelled(home: Path) -> list[dict]:
    """Per answerable dev question: its document and each window's features and label."""
    backend = open_backend(None)
    collection = index.create(home, "evalset", backend.identity, backend.dim)
    ingest(collection, backend, [EVALSET / "docs"])
    items = [i for i in evaluate.load_qa(EVALSET / "qa.jsonl") if i.split == "dev" and i.answerable]
    out = []
    for item in items:
        hits = retrieve(collection, backend, item.question, 5)
        found = extract.candidates(
            item.question, hits, backend.embed, collection.document_text, every_window=True
        )
        windows = []
        for c in found:
            held = [evaluate.contains_answer(c.text, a) for a in item.answers]
            gold = all(held) if item.require_all else any(held)
            windows.append((list(extract.rank_features(c).values()), float(gold)))
        out.append({"doc": item.docs[0], "windows": windows})
    return out


def top1(questions: list[dict], w: np.ndarray) -> float:
    right = 0
    for q in questions:
        if q["windows"]:
            scores = [float(np.dot(w, f)) for f, _ in q["windows"]]
            right += int(q["windows"][int(np.argmax(scores))][1])
    return right / len(questions)


def fit(questions: list[dict], l2: float) -> np.ndarray:
    x = np.array([f for q in questions for f, _ in q["windows"]])
    y = np.array([g for q in questions for _, g in q["windows"]])
    return logistic(x, y, l2)[:-1]  # ranking needs no bias


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--l2", type=float, default=1.0, help="L2 penalty (default 1.0)")
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    machine = describe()
    with tempfile.TemporaryDirectory(prefix="rag-fit-") as work:
        questions = labelled(Path(work))
    names = list(extract.RANK_WEIGHTS)
    shipped = np.array([extract.RANK_WEIGHTS[n] for n in names])
    docs = sorted({q["doc"] for q in questions})
    folds = [
        [q for q in questions if docs.index(q["doc"]) % args.folds == k] for k in range(args.folds)
    ]
    right = right_shipped = 0.0
    for k, test in enumerate(folds):
        train = [q for j, fold in enumerate(folds) if j != k for q in fold]
        right += top1(test, fit(train, args.l2)) * len(test)
        right_shipped += top1(test, shipped) * len(test)
    weights = fit(questions, args.l2)
    result = {
        "dev_questions": len(questions),
        "l2": args.l2,
        "cv_top1": round(right / len(questions), 4),
        "shipped_top1": round(right_shipped / len(questions), 4),
        "oracle": round(
            sum(any(g for _, g in q["windows"]) for q in questions) / len(questions), 4
        ),
        "in_sample_top1": round(top1(questions, weights), 4),
        "weights": {n: round(float(v), 3) for n, v in zip(names, weights, strict=True)},
        "cpu": machine.get("cpu"),
    }
    print(f"dev answerable questions: {len(questions)}, {args.folds} folds by document")
    print(f"first window holds the answer, cross-validated: {result['cv_top1']}")
    print(f"  the weights in the code (in-sample if fitted here): {result['shipped_top1']}")
    print(f"  some window holds it (oracle): {result['oracle']}")
    print("weights fitted on the whole dev half:")
    for n, v in result["weights"].items():
        print(f"  {n:10s} {v:8.3f}")
    print(json.dumps(result))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
