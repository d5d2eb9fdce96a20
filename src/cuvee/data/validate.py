"""`cuvee data check`: read data files, check every record, and report what a person must know
before training on them (errors with file:line:field, duplicates, lengths, licence)."""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cuvee.data.formats import Problem, ReadResult, read_file
from cuvee.data.records import Conversation, Origin
from cuvee.errors import DataError
from cuvee.licences import Licence, combined_commercial_use, resolve_licence

# Fields that carry nothing to learn from. Short is not empty: "HR", "No" and "42" are real
# answers; "-", "..." and "n/a" are not.
PLACEHOLDERS = frozenset({"n/a", "na", "none", "null", "todo", "tbd", "xxx", "lorem ipsum", "test"})
SIDECAR_SUFFIX = ".cuvee.yaml"


@dataclass(frozen=True)
class DataDeclaration:
    """What a sidecar ``<file>.cuvee.yaml`` (or ``--licence``/``--author``) declares for a file.
    ``model`` is set for data a model wrote (``cuvee data pairs``): its name, licence and
    lineage, which the data's own licence does not cover."""

    licence: Licence
    authors: tuple[str, ...] = ()
    source: str | None = None
    declared_by: str = "none"
    model: dict[str, Any] | None = None


def read_declaration(path: Path, licence_flag: str | None = None) -> DataDeclaration:
    """The licence and authors of a data file: ``--licence`` wins over the sidecar file."""
    sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
    data: dict[str, Any] = {}
    if sidecar.is_file():
        import yaml

        try:
            data = yaml.safe_load(sidecar.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise DataError(f"{sidecar}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise DataError(f"{sidecar}: expected a mapping with licence, authors, source")
        unknown = set(data) - {"licence", "license", "authors", "source", "model"}
        if unknown:
            raise DataError(
                f"{sidecar}: unknown key(s) {', '.join(sorted(unknown))}",
                hint="allowed keys: licence, authors, source, model",
            )
        if not isinstance(data.get("model", {}), dict):
            raise DataError(f'{sidecar}: field "model" must be a mapping (name, licence, ...)')
    authors = data.get("authors") or []
    if isinstance(authors, str):
        authors = [authors]
    if not isinstance(authors, list) or not all(isinstance(a, str) for a in authors):
        raise DataError(f'{sidecar}: field "authors" must be a list of names')
    if licence_flag:
        lic, by = resolve_licence(licence_flag), "--licence"
    elif data.get("licence") or data.get("license"):
        lic, by = resolve_licence(str(data.get("licence") or data.get("license"))), str(sidecar)
    else:
        lic, by = resolve_licence(None), "none"
    return DataDeclaration(lic, tuple(authors), data.get("source"), by, data.get("model"))


@dataclass
class LengthStats:
    unit: str
    p50: int
    p95: int
    max: int
    mean: float

    @classmethod
    def of(cls, values: Sequence[int], unit: str) -> LengthStats | None:
        if not values:
            return None
        ordered = sorted(values)

        def pct(p: float) -> int:
            # Nearest-rank percentile: the ceil(p * n)-th smallest, a value that occurs.
            return ordered[max(0, math.ceil(p * len(ordered) - 1e-9) - 1)]

        return cls(unit, pct(0.50), pct(0.95), ordered[-1], round(sum(ordered) / len(ordered), 1))


@dataclass
class CheckReport:
    files: list[dict[str, Any]] = field(default_factory=list)
    records: list[Conversation] = field(default_factory=list)
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    lengths: LengthStats | None = None
    over_max: int = 0
    duplicates: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "records": len(self.records),
            "errors": [p.to_json() for p in self.errors],
            "warnings": [p.to_json() for p in self.warnings],
            "formats": dict(Counter(r.format for r in self.records)),
            "categories": dict(Counter(r.category or "(none)" for r in self.records)),
            "splits": dict(Counter(r.split or "(none)" for r in self.records)),
            "licence": licence_summary(self.files),
            "files": self.files,
            "lengths": None if self.lengths is None else vars(self.lengths),
            "over_max_length": self.over_max,
            "duplicates": self.duplicates,
        }


def licence_summary(files: list[dict[str, Any]]) -> dict[str, Any]:
    """Each file's licence, and whether all of them together allow commercial use."""
    licences = [resolve_licence(f["licence"]["id"]) for f in files]
    return {
        "files": {f["path"]: f["licence"] for f in files},
        "commercial_use": combined_commercial_use(licences),
    }


def file_entry(
    path: Path,
    display: str,
    fmt: str | None,
    records: int,
    errors: int,
    declaration: DataDeclaration,
) -> dict[str, Any]:
    """What a check reports of one file: format, counts, digest, licence, authors."""
    return {
        "path": display,
        "format": fmt,
        "records": records,
        "errors": errors,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "licence": declaration.licence.model_dump(),
        "licence_declared_by": declaration.declared_by,
        "authors": list(declaration.authors),
        **({"model": declaration.model} if declaration.model else {}),
    }


def fingerprint(*texts: str) -> str:
    """A key equal for texts that differ only in case and whitespace: not a new example."""
    text = "\x00".join(re.sub(r"\s+", " ", t).strip().lower() for t in texts)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _fingerprint(record: Conversation) -> str:
    return fingerprint(record.fields_text())


def _is_near_empty(value: str) -> bool:
    stripped = value.strip()
    return not any(ch.isalnum() for ch in stripped) or stripped.lower() in PLACEHOLDERS


def warning_at(origin: Origin, message: str, field: str | None = None) -> Problem:
    return Problem(
        origin.file, message, line=origin.line, index=origin.index, field=field, severity="warning"
    )


def _warning(record: Conversation, message: str, field: str | None = None) -> Problem:
    return warning_at(record.origin, message, field)


def _near_empty(record: Conversation) -> list[tuple[str, str]]:
    if record.text is not None:
        return [("text", record.text)] if _is_near_empty(record.text) else []
    return [
        (f"turn {i} ({turn.role})", turn.content)
        for i, turn in enumerate(record.turns)
        if _is_near_empty(turn.content)
    ]


def check_files(
    paths: Sequence[Path | str],
    *,
    fmt: str | None = None,
    licence: str | None = None,
    count_tokens: Callable[[list[Conversation]], list[int]] | None = None,
    max_tokens: int = 2048,
) -> CheckReport:
    """Check every record of every file. Reads only; never writes to the inputs."""
    report = CheckReport()
    seen: dict[str, str] = {}
    for path in paths:
        result: ReadResult = read_file(path, fmt)
        declaration = read_declaration(Path(path), licence)
        report.files.append(
            file_entry(
                Path(path),
                result.path,
                result.format,
                len(result.records),
                len(result.problems),
                declaration,
            )
        )
        report.errors.extend(result.problems)
        for record in result.records:
            for where, value in _near_empty(record):
                report.warnings.append(
                    _warning(record, f"{where} is nearly empty ({value.strip()!r})", where)
                )
            key = _fingerprint(record)
            if key in seen:
                report.duplicates += 1
                report.warnings.append(_warning(record, f"duplicate of {seen[key]}"))
            else:
                seen[key] = str(record.origin)
            report.records.append(record)

    if count_tokens is not None:
        lengths, unit = count_tokens(report.records), "tokens"
    else:
        # Without a tokenizer, about four characters a token for English text.
        lengths, unit = [len(r.fields_text()) // 4 for r in report.records], "tokens (estimated)"
    report.lengths = LengthStats.of(lengths, unit)
    for record, n in zip(report.records, lengths, strict=True):
        if n > max_tokens:
            report.over_max += 1
            report.warnings.append(
                _warning(record, f"{n} {unit} is over the maximum of {max_tokens}; truncated")
            )
    return report


def token_counter(
    model_dir: Path, template_family: str
) -> Callable[[list[Conversation]], list[int]]:
    """Count tokens as training will see them: the model's chat template rendered, then
    tokenized with the stored tokenizer (tokenizers only, no torch)."""
    from cuvee.chat_template import get_template
    from cuvee.tokenizer import load_tokenizer, special_tokens

    tokenizer = load_tokenizer(model_dir)
    bos, eos = special_tokens(model_dir)
    template = get_template(template_family)

    def count(records: list[Conversation]) -> list[int]:
        texts = [
            f"{bos}{r.text}{eos}" if r.is_text else template.render(r.messages(), bos_token=bos)
            for r in records
        ]
        return [len(enc.ids) for enc in tokenizer.encode_batch(texts, add_special_tokens=False)]

    return count
