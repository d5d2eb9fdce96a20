"""`cuvee data check` for preference data: every record checked, and what a person must know
before DPO, ORPO or KTO training on it (pairs and labels, lengths of prompts and answers,
duplicate and contradicting pairs, licence)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cuvee.data.formats import Problem
from cuvee.data.preference import PreferenceRecord, read_preferences
from cuvee.data.records import Conversation, Turn
from cuvee.data.validate import (
    LengthStats,
    _is_near_empty,
    _near_empty,
    file_entry,
    fingerprint,
    licence_summary,
    warning_at,
)

# Token counts of conversations, as `cuvee.data.validate.token_counter` gives.
TokenCounter = Callable[[list[Conversation]], list[int]]
LENGTH_FIELDS = ("prompt", "chosen", "rejected", "completion", "sequence")


@dataclass
class PreferenceCheckReport:
    files: list[dict[str, Any]] = field(default_factory=list)
    records: list[PreferenceRecord] = field(default_factory=list)
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    # Prompt, each kind of answer, and sequence (prompt and one answer, as training sees it).
    lengths: dict[str, LengthStats | None] = field(default_factory=dict)
    over_max: int = 0
    duplicates: int = 0
    contradictions: int = 0
    # Share of pairs whose chosen answer is longer: DPO learns length when this is far from 0.5.
    chosen_longer: float | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        pairs = sum(r.is_pair for r in self.records)
        labels = Counter(r.label for r in self.records if not r.is_pair)
        return {
            "ok": self.ok,
            "kind": "preference",
            "records": len(self.records),
            "pairs": pairs,
            "unpaired": {"desirable": labels[True], "undesirable": labels[False]},
            "mixed": 0 < pairs < len(self.records),
            "errors": [p.to_json() for p in self.errors],
            "warnings": [p.to_json() for p in self.warnings],
            "formats": dict(Counter(r.format for r in self.records)),
            "splits": dict(Counter(r.prompt.split or "(none)" for r in self.records)),
            "licence": licence_summary(self.files),
            "files": self.files,
            "lengths": {k: None if v is None else vars(v) for k, v in self.lengths.items()},
            "over_max_length": self.over_max,
            "duplicates": self.duplicates,
            "contradictions": self.contradictions,
            "chosen_longer": self.chosen_longer,
        }


def _keys(record: PreferenceRecord) -> tuple[str, str]:
    """The record's duplicate key, and the key of a record that says the opposite."""
    prompt = record.prompt.fields_text()
    if record.is_pair:
        chosen, rejected = record.chosen or "", record.rejected or ""
        return fingerprint(prompt, chosen, rejected), fingerprint(prompt, rejected, chosen)
    completion, label = record.completion or "", str(record.label)
    return fingerprint(prompt, completion, label), fingerprint(prompt, completion, str(not label))


def _record_warnings(record: PreferenceRecord) -> list[Problem]:
    out = [
        warning_at(record.origin, f"prompt {where} is nearly empty ({value.strip()!r})", where)
        for where, value in _near_empty(record.prompt)
    ]
    out += [
        warning_at(record.origin, f"{key} is nearly empty ({value.strip()!r})", key)
        for key, value in record.answers()
        if _is_near_empty(value)
    ]
    return out


def _with_answer(prompt: Conversation, answer: str) -> Conversation:
    return replace(prompt, turns=(*prompt.turns, Turn("assistant", answer)))


def _measure(
    records: list[PreferenceRecord], count_tokens: TokenCounter | None
) -> tuple[list[int], list[list[int]], str]:
    """Each prompt's length, and each record's answers' lengths (in ``answers()`` order)."""
    if count_tokens is None:
        # Without a tokenizer, about four characters a token for English text.
        prompts = [len(r.prompt.fields_text()) // 4 for r in records]
        answers = [[len(text) // 4 for _, text in r.answers()] for r in records]
        return prompts, answers, "tokens (estimated)"
    prompts = count_tokens([r.prompt for r in records])
    # An answer's tokens are what it adds to its prompt under the chat template.
    whole = [_with_answer(r.prompt, text) for r in records for _, text in r.answers()]
    counts = iter(count_tokens(whole))
    answers = [
        [next(counts) - p for _ in r.answers()] for r, p in zip(records, prompts, strict=True)
    ]
    return prompts, answers, "tokens"


def check_preference_files(
    paths: Sequence[Path | str],
    *,
    fmt: str | None = None,
    licence: str | None = None,
    count_tokens: TokenCounter | None = None,
    max_tokens: int = 2048,
) -> PreferenceCheckReport:
    """Check every record of every preference file. Reads only; never writes to the inputs."""
    report = PreferenceCheckReport()
    seen: dict[str, str] = {}
    for path in paths:
        result = read_preferences(path, fmt, licence=licence)
        report.files.append(
            file_entry(
                Path(path),
                result.path,
                ", ".join(result.formats) or None,
                len(result.records),
                len(result.problems),
                result.declaration,
            )
        )
        report.errors.extend(result.problems)
        pairs, unpaired = len(result.pairs), len(result.unpaired)
        if pairs and unpaired:
            report.warnings.append(
                Problem(
                    result.path,
                    f"mixes {pairs} pairs and {unpaired} unpaired records; "
                    "DPO and ORPO take pairs only, KTO takes both",
                    severity="warning",
                )
            )
        for record in result.records:
            report.warnings += _record_warnings(record)
            key, opposite = _keys(record)
            if key in seen:
                report.duplicates += 1
                report.warnings.append(warning_at(record.origin, f"duplicate of {seen[key]}"))
            elif opposite in seen:
                report.contradictions += 1
                what = "chosen and rejected swapped" if record.is_pair else "the opposite label"
                report.warnings.append(
                    warning_at(record.origin, f"contradicts {seen[opposite]} ({what})")
                )
            seen.setdefault(key, str(record.origin))
            report.records.append(record)

    prompts, answers, unit = _measure(report.records, count_tokens)
    by_field: dict[str, list[int]] = {name: [] for name in LENGTH_FIELDS}
    by_field["prompt"] = prompts
    longer = []
    for record, prompt, lengths in zip(report.records, prompts, answers, strict=True):
        for (name, _), n in zip(record.answers(), lengths, strict=True):
            by_field[name].append(n)
            by_field["sequence"].append(prompt + n)
            if prompt + n > max_tokens:
                report.over_max += 1
                report.warnings.append(
                    warning_at(
                        record.origin,
                        f"prompt + {name}: {prompt + n} {unit} is over the maximum of "
                        f"{max_tokens}; truncated",
                        name,
                    )
                )
        if record.is_pair:
            longer.append(lengths[0] > lengths[1])
    report.lengths = {name: LengthStats.of(values, unit) for name, values in by_field.items()}
    report.chosen_longer = round(sum(longer) / len(longer), 3) if longer else None
    return report
