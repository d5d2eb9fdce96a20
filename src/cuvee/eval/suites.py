"""What a suite is, and the registry of them. A suite turns a file (or its packaged fixture) into
items to put to a model, and the model's answers into metrics; adding one is a module with a
``SUITE`` object listed in ``SUITE_MODULES``, so no runner code changes for a new suite."""

from __future__ import annotations

import difflib
import hashlib
import importlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from cuvee.errors import CuveeError
from cuvee.jsonl import read_objects

if TYPE_CHECKING:
    from cuvee.config import Settings


class EvalError(CuveeError):
    """An evaluation cannot run as asked: a bad suite file, an unknown suite or model, an
    endpoint that fails."""


@dataclass(frozen=True)
class Item:
    """One prompt of a suite. ``data`` is what the suite scores the answer against (reference,
    label, instruction ids...); ``where`` is ``file:line``, for messages that must point at it."""

    id: str
    prompt: str
    system: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    where: str = ""

    def messages(self) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, {"role": "user", "content": self.prompt}]


@dataclass
class Score:
    """A suite's verdict on one model's answers. ``metrics`` are the figures compared across
    models (rates in [0, 1] unless the suite says otherwise); ``counts`` say how many things were
    scored and what went wrong (checker errors, unparseable judge replies), so nothing that was
    not scored can hide; ``items`` hold per-item details for the report."""

    metrics: dict[str, float]
    counts: dict[str, int] = field(default_factory=dict)
    items: list[dict[str, Any]] = field(default_factory=list)


@runtime_checkable
class Suite(Protocol):
    """A registered suite. ``version`` changes whenever prompts or scoring change, so cached
    generations and published figures are never mixed across versions. ``max_tokens`` is the
    generation limit the suite needs (``--max-tokens`` overrides it)."""

    name: str
    version: str
    description: str
    max_tokens: int

    def accepts(self, record: dict[str, Any]) -> bool:
        """Whether a file whose first record is ``record`` is in this suite's format."""
        ...

    def load(self, path: Path | None) -> list[Item]:
        """The items of ``path``, or of the packaged fixture when None. A bad record raises
        EvalError naming ``file:line``."""
        ...

    def score(self, items: list[Item], outputs: list[str]) -> Score: ...


class ComparingSuite(Suite, Protocol):
    """A suite whose verdict compares two models' answers through a judge model instead of
    scoring each model alone (``compares = True``)."""

    compares: bool

    def compare(
        self,
        items: list[Item],
        outputs_a: list[str],
        outputs_b: list[str],
        judge: Any,
        names: tuple[str, str] | None = None,
    ) -> Score: ...


# Modules that define one ``SUITE`` each; imported on first lookup, so listing commands never
# pays for a suite's dependencies. Another suite (e.g. document QA) is one more entry here, or a
# call to :func:`register`.
SUITE_MODULES: list[str] = [
    "cuvee.eval.instructions",
    "cuvee.eval.tasks",
    "cuvee.eval.pairwise",
    "cuvee.eval.grounded",
]
SUITES: dict[str, Suite] = {}
_loaded: set[str] = set()


def register(suite: Suite) -> Suite:
    """Add ``suite`` to the registry under its name (a later registration replaces it)."""
    SUITES[suite.name] = suite
    return suite


def _load_builtins() -> None:
    for module in SUITE_MODULES:
        if module not in _loaded:
            _loaded.add(module)
            register(importlib.import_module(module).SUITE)


def suite_names() -> list[str]:
    _load_builtins()
    return sorted(SUITES)


def get_suite(name: str) -> Suite:
    _load_builtins()
    suite = SUITES.get(name)
    if suite is None:
        close = difflib.get_close_matches(name, SUITES, n=2)
        raise EvalError(
            f"unknown suite {name!r}",
            hint=(f"did you mean {', '.join(close)}? " if close else "")
            + f"suites: {', '.join(sorted(SUITES))}, or a .jsonl file in one's format",
        )
    return suite


@dataclass(frozen=True)
class ResolvedSuite:
    """A suite with its items' source: the file (or packaged fixture) and its sha256, which
    keys the cache and is recorded with every result."""

    suite: Suite
    path: Path
    packaged: bool
    sha256: str
    items: list[Item]

    @property
    def label(self) -> str:
        return self.suite.name if self.packaged else f"{self.suite.name}:{self.path.name}"


def fixture_path(name: str) -> Path:
    """The packaged fixture of suite ``name`` (``cuvee/eval/fixtures/NAME.jsonl``)."""
    return Path(str(files("cuvee.eval") / "fixtures" / f"{name}.jsonl"))


def resolve_suite(spec: str, settings: Settings | None = None) -> ResolvedSuite:
    """``spec`` is a suite name (its packaged fixture), ``NAME=FILE``, or a FILE whose format
    picks the suite (the first suite that accepts its first record). A suite that needs the
    settings in force (``--home``, the embedding model) has a ``bind(settings)`` returning a
    copy that uses them."""
    name, sep, file = spec.partition("=")
    if Path(spec).expanduser().is_file() or (spec.endswith(".jsonl") and not sep):
        path, packaged = Path(spec).expanduser(), False
        suite = detect_suite(path)
    elif sep:
        suite, path, packaged = get_suite(name), Path(file).expanduser(), False
    else:
        suite = get_suite(spec)
        path, packaged = getattr(suite, "fixture", None) or fixture_path(suite.name), True
    if settings is not None and hasattr(suite, "bind"):
        suite = suite.bind(settings)
    if not path.is_file():
        raise EvalError(f"{path}: no such suite file")
    items = suite.load(None if packaged else path)
    if not items:
        raise EvalError(f"{path}: the file has no items")
    seen: dict[str, str] = {}
    for item in items:
        if item.id in seen:
            raise EvalError(f"{item.where}: item id {item.id!r} repeats {seen[item.id]}")
        seen[item.id] = item.where
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return ResolvedSuite(suite, path, packaged, digest, items)


def detect_suite(path: Path) -> Suite:
    if not path.is_file():
        raise EvalError(f"{path}: no such suite file")
    first = next(read_jsonl(path), None)
    if first is None:
        raise EvalError(f"{path}: the file has no records")
    _load_builtins()
    for suite in SUITES.values():
        if suite.accepts(first[1]):
            return suite
    raise EvalError(
        f"{path}:{first[0]}: no suite reads records with keys {', '.join(sorted(first[1]))}",
        hint="name the suite: --suite NAME=FILE; formats are in `cuvee eval --help`",
    )


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for each non-blank line; a bad line raises EvalError naming the
    file and line."""
    return read_objects(path, EvalError, "suite file")


def require(record: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """``record[key]``, checked to be of ``kind``; else EvalError at ``where``."""
    if key not in record:
        raise EvalError(f"{where}: missing field {key!r}")
    value = record[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise EvalError(f"{where}: field {key!r} must be a {names}, not {type(value).__name__}")
    return value


def source_of(suite_name: str, path: Path | None) -> Path:
    return path if path is not None else fixture_path(suite_name)
