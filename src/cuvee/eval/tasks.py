"""`tasks`: the jobs a team fine-tunes a small model for, each with the metric that fits it:
summarisation (ROUGE-L), classification (accuracy and macro-F1), extraction to JSON (valid-JSON
rate and field accuracy) and closed QA (exact and contains match). One registry of task kinds,
so a record's ``task`` picks its checks and its scorer."""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cuvee.eval.suites import EvalError, Item, Score, read_jsonl, require, source_of

_WORD = re.compile(r"\w+")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n(.*?)\n?```$", re.S)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists (dynamic programming over
    one row, O(len(a) * len(b)) time, O(len(b)) memory)."""
    if not a or not b:
        return 0
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0
        for j, y in enumerate(b, 1):
            above = row[j]
            row[j] = diagonal + 1 if x == y else max(row[j], row[j - 1])
            diagonal = above
    return row[-1]


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 over lowercase word tokens: the LCS's precision against the candidate and
    recall against the reference, harmonically averaged."""
    cand, ref = words(candidate), words(reference)
    lcs = lcs_length(cand, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(cand), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lowercase, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(_ARTICLES.sub(" ", text).split())


def predicted_label(output: str, labels: list[str]) -> str | None:
    """The label an answer gives: the whole answer is a label, or exactly one label appears
    in it as a phrase; None when none or several do (scored as wrong, never guessed)."""
    said = normalize_answer(output)
    by_norm = {normalize_answer(label): label for label in labels}
    if said in by_norm:
        return by_norm[said]
    found = [label for norm, label in by_norm.items() if f" {norm} " in f" {said} "]
    return found[0] if len(found) == 1 else None


def macro_f1(gold: list[str], predicted: list[str | None]) -> float:
    """Mean F1 over the classes that are gold or predicted; a None prediction is a miss for its
    gold class and a false positive for none."""
    classes = sorted(set(gold) | {p for p in predicted if p is not None})
    scores = []
    for c in classes:
        tp = sum(g == c and p == c for g, p in zip(gold, predicted, strict=True))
        fp = sum(g != c and p == c for g, p in zip(gold, predicted, strict=True))
        fn = sum(g == c and p != c for g, p in zip(gold, predicted, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(scores) / len(scores) if scores else 0.0


def parse_json_answer(output: str) -> Any:
    """The JSON value an answer is: the whole text, or the body of one markdown code fence
    around it. Prose around the JSON makes it invalid (a program reading it would fail too)."""
    text = output.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    return json.loads(text)


def _same_value(got: Any, want: Any) -> bool:
    if isinstance(want, bool) or want is None:
        return got == want
    if isinstance(want, int | float):
        try:
            return float(str(got).replace(",", "")) == float(want)
        except ValueError:
            return False
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(_same_value, got, want))
    return isinstance(got, str | int | float) and " ".join(str(got).casefold().split()) == " ".join(
        str(want).casefold().split()
    )


@dataclass(frozen=True)
class TaskKind:
    """One kind of task: the fields its records need (name -> type) and its scorer, which
    takes the items of that kind and their answers and returns (metrics, counts, details)."""

    fields: dict[str, type | tuple[type, ...]]
    score: Callable[[list[Item], list[str]], tuple[dict, dict, list]]
    check: Callable[[dict[str, Any], str], None] = lambda record, where: None


def _score_summaries(items, outputs):
    values = [rouge_l(o, i.data["reference"]) for i, o in zip(items, outputs, strict=True)]
    details = [{"id": i.id, "rouge_l": v} for i, v in zip(items, values, strict=True)]
    return {"summary_rouge_l": sum(values) / len(values)}, {"summaries": len(items)}, details


def _check_classification(record, where):
    if record["label"] not in record["labels"]:
        raise EvalError(f"{where}: label {record['label']!r} is not one of 'labels'")


def _score_classification(items, outputs):
    gold = [i.data["label"] for i in items]
    predicted = [predicted_label(o, i.data["labels"]) for i, o in zip(items, outputs, strict=True)]
    right = sum(g == p for g, p in zip(gold, predicted, strict=True))
    details = [
        {"id": i.id, "label": g, "predicted": p}
        for i, g, p in zip(items, gold, predicted, strict=True)
    ]
    metrics = {"class_accuracy": right / len(items), "class_macro_f1": macro_f1(gold, predicted)}
    counts = {"classifications": len(items), "no_label": predicted.count(None)}
    return metrics, counts, details


def _check_extraction(record, where):
    if not record["fields"]:
        raise EvalError(f"{where}: 'fields' is empty: nothing to check")


def _score_extraction(items, outputs):
    valid = right = total = 0
    details = []
    for item, output in zip(items, outputs, strict=True):
        want = item.data["fields"]
        try:
            got = parse_json_answer(output)
        except (json.JSONDecodeError, ValueError):
            got = None
        is_object = isinstance(got, dict)
        valid += is_object
        matched = [k for k, v in want.items() if is_object and k in got and _same_value(got[k], v)]
        right += len(matched)
        total += len(want)
        details.append({"id": item.id, "valid_json": is_object, "fields_right": len(matched)})
    metrics = {"extract_valid_json": valid / len(items), "extract_field_accuracy": right / total}
    return metrics, {"extractions": len(items), "fields": total}, details


def _check_answers(record, where):
    if not record["answers"] or not all(isinstance(a, str) for a in record["answers"]):
        raise EvalError(f"{where}: 'answers' must be a non-empty list of strings")


def _score_closed_qa(items, outputs):
    exact = contains = 0
    details = []
    for item, output in zip(items, outputs, strict=True):
        said = normalize_answer(output)
        answers = [normalize_answer(a) for a in item.data["answers"]]
        is_exact = said in answers
        has = any(f" {a} " in f" {said} " for a in answers if a)
        exact += is_exact
        contains += has
        details.append({"id": item.id, "exact": is_exact, "contains": has})
    n = len(items)
    return {"qa_exact": exact / n, "qa_contains": contains / n}, {"questions": n}, details


TASKS: dict[str, TaskKind] = {
    "summarise": TaskKind({"reference": str}, _score_summaries),
    "classify": TaskKind(
        {"labels": list, "label": str}, _score_classification, _check_classification
    ),
    "extract": TaskKind({"fields": dict}, _score_extraction, _check_extraction),
    "closed_qa": TaskKind({"answers": list}, _score_closed_qa, _check_answers),
}


class TasksSuite:
    name = "tasks"
    version = "1"
    description = "summarise (ROUGE-L), classify (accuracy, macro-F1), extract JSON, closed QA"
    max_tokens = 160

    def accepts(self, record: dict[str, Any]) -> bool:
        return record.get("task") in TASKS

    def load(self, path: Path | None) -> list[Item]:
        path = source_of(self.name, path)
        items = []
        for number, record in read_jsonl(path):
            where = f"{path}:{number}"
            task = require(record, "task", str, where)
            kind = TASKS.get(task)
            if kind is None:
                raise EvalError(
                    f"{where}: unknown task {task!r}", hint=f"one of: {', '.join(TASKS)}"
                )
            prompt = require(record, "prompt", str, where)
            data = {"task": task}
            for field_name, field_type in kind.fields.items():
                data[field_name] = require(record, field_name, field_type, where)
            kind.check(record, where)
            items.append(
                Item(
                    id=str(record.get("id", number)),
                    prompt=prompt,
                    system=record.get("system"),
                    data=data,
                    where=where,
                )
            )
        return items

    def score(self, items: list[Item], outputs: list[str]) -> Score:
        score = Score(metrics={})
        for task, kind in TASKS.items():
            picked = [(i, o) for i, o in zip(items, outputs, strict=True) if i.data["task"] == task]
            if not picked:
                continue
            metrics, counts, details = kind.score([i for i, _ in picked], [o for _, o in picked])
            score.metrics.update(metrics)
            score.counts.update(counts)
            score.items.extend(details)
        return score


SUITE = TasksSuite()
