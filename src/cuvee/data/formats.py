"""Readers for instruction data formats, each normalising records to :class:`Conversation`.

A reader never stops at the first bad record: every problem is collected with its file, line (or
element index) and field, the way a compiler reports errors."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cuvee.data.records import Conversation, Origin, Turn
from cuvee.errors import DataError


@dataclass(frozen=True)
class Problem:
    """One thing wrong (error) or worth a look (warning) in a data file."""

    file: str
    message: str
    line: int | None = None
    index: int | None = None
    field: str | None = None
    severity: str = "error"

    @property
    def location(self) -> str:
        return str(Origin(self.file, self.line, self.index))

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "index": self.index,
            "field": self.field,
            "message": self.message,
            "severity": self.severity,
        }


class RecordError(Exception):
    """Raised by a format's parser for one record; becomes a :class:`Problem`."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class DataFormat:
    name: str
    description: str
    # Keys whose presence identifies the format, checked in registry order.
    signature: tuple[str, ...]
    parse: Callable[[dict[str, Any], Origin], Conversation]


FORMATS: dict[str, DataFormat] = {}


def register(fmt: DataFormat) -> DataFormat:
    FORMATS[fmt.name] = fmt
    return fmt


# ---------------------------------------------------------------- field access with clear errors


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def _string(obj: dict[str, Any], key: str, *, required: bool, path: str | None = None) -> str:
    name = path or key
    if key not in obj:
        if required:
            raise RecordError(name, f'field "{name}" is missing')
        return ""
    value = obj[key]
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise RecordError(name, f'field "{name}" must be a string, got {_type_name(value)}')
    if required and not value.strip():
        raise RecordError(name, f'field "{name}" is empty')
    return value


def _common(obj: dict[str, Any]) -> dict[str, Any]:
    """Optional keys any format may carry: category, split, metadata."""
    out: dict[str, Any] = {}
    for key in ("category", "split"):
        if key in obj and obj[key] is not None:
            if not isinstance(obj[key], str):
                raise RecordError(
                    key, f'field "{key}" must be a string, got {_type_name(obj[key])}'
                )
            out[key] = obj[key]
    meta = obj.get("metadata")
    if meta is not None:
        if not isinstance(meta, dict):
            raise RecordError(
                "metadata", f'field "metadata" must be an object, got {_type_name(meta)}'
            )
        out["metadata"] = meta
    return out


def _check_alternation(turns: list[Turn], where: str, positions: list[int]) -> None:
    """User and assistant alternate, starting with the user. ``positions`` are the turns'
    indexes in the file's array (a system message shifts them)."""
    if not turns:
        raise RecordError(where, f'field "{where}" has no user or assistant turns')
    expected = "user"
    for i, turn in zip(positions, turns, strict=True):
        if turn.role != expected:
            raise RecordError(
                f"{where}[{i}]",
                f'turn {i} in "{where}" should be from the {expected}, not the {turn.role} '
                "(turns must alternate user/assistant)",
            )
        expected = "assistant" if expected == "user" else "user"


def _check_order(turns: list[Turn], where: str, positions: list[int]) -> None:
    """Alternating turns that end with the assistant: the shape supervised fine-tuning needs."""
    _check_alternation(turns, where, positions)
    if turns[-1].role != "assistant":
        raise RecordError(where, f'"{where}" must end with an assistant turn to train on')


# ------------------------------------------------------------------------------------- formats


def _alpaca_history(obj: dict[str, Any]) -> list[Turn]:
    """Alpaca's optional ``history``: earlier [question, answer] pairs, as turns."""
    turns: list[Turn] = []
    history = obj.get("history") or []
    if not isinstance(history, list):
        raise RecordError("history", f'field "history" must be an array, got {_type_name(history)}')
    for i, pair in enumerate(history):
        if not (
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)
        ):
            raise RecordError(f"history[{i}]", f'field "history[{i}]" must be [question, answer]')
        turns += [Turn("user", pair[0]), Turn("assistant", pair[1])]
    return turns


def _parse_alpaca(obj: dict[str, Any], origin: Origin) -> Conversation:
    instruction = _string(obj, "instruction", required=True)
    output = _string(obj, "output", required=True)
    context = _string(obj, "input", required=False)
    system = _string(obj, "system", required=False) or None
    turns = _alpaca_history(obj)
    turns += [Turn("user", instruction), Turn("assistant", output)]
    return Conversation(
        turns=tuple(turns),
        origin=origin,
        format="alpaca",
        system=system,
        context=(context,) if context.strip() else (),
        **_common(obj),
    )


def _parse_dolly(obj: dict[str, Any], origin: Origin) -> Conversation:
    instruction = _string(obj, "instruction", required=True)
    response = _string(obj, "response", required=True)
    context = _string(obj, "context", required=False)
    return Conversation(
        turns=(Turn("user", instruction), Turn("assistant", response)),
        origin=origin,
        format="dolly",
        context=(context,) if context.strip() else (),
        **_common(obj),
    )


def _content_text(value: Any, where: str) -> str:
    """OpenAI content: a string, or an array of parts of which only text parts are supported."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for i, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else _type_name(part)
                raise RecordError(
                    f"{where}[{i}]",
                    f'content part {i} of "{where}" is {kind!r}; only text parts are supported',
                )
            texts.append(_string(part, "text", required=True, path=f"{where}[{i}].text"))
        return "".join(texts)
    raise RecordError(where, f'field "{where}" must be a string or an array of text parts')


def _array(obj: dict[str, Any], key: str) -> list[Any]:
    value = obj.get(key)
    if not isinstance(value, list) or not value:
        raise RecordError(key, f'field "{key}" must be a non-empty array')
    return value


def _openai_message(msg: Any, where: str) -> tuple[str, str]:
    """One OpenAI message: its role (a developer message is a system one) and its text."""
    if not isinstance(msg, dict):
        raise RecordError(where, f'"{where}" must be an object, got {_type_name(msg)}')
    role = msg.get("role")
    if role not in ("system", "developer", "user", "assistant"):
        raise RecordError(
            f"{where}.role",
            f'field "{where}.role" is {role!r}; supported roles: system, user, assistant',
        )
    content = _content_text(msg.get("content"), f"{where}.content")
    if not content.strip():
        raise RecordError(f"{where}.content", f'field "{where}.content" is empty')
    return ("system" if role == "developer" else role), content


def _openai_turns(messages: list[Any], where: str) -> tuple[str | None, list[Turn], list[int]]:
    """The system prompt, the turns and their indexes in ``messages``; order is not checked."""
    system: str | None = None
    turns: list[Turn] = []
    positions: list[int] = []
    for i, msg in enumerate(messages):
        role, content = _openai_message(msg, f"{where}[{i}]")
        if role == "system":
            if i != 0:
                raise RecordError(f"{where}[{i}].role", "a system message is only allowed first")
            system = content
        else:
            turns.append(Turn(role, content))
            positions.append(i)
    return system, turns, positions


def _parse_openai(obj: dict[str, Any], origin: Origin) -> Conversation:
    messages = _array(obj, "messages")
    system, turns, positions = _openai_turns(messages, "messages")
    _check_order(turns, "messages", positions)
    return Conversation(
        turns=tuple(turns), origin=origin, format="openai", system=system, **_common(obj)
    )


_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "system": "system",
}


def _sharegpt_message(msg: Any, where: str) -> tuple[str, str]:
    """One ShareGPT turn: its role and its text."""
    if not isinstance(msg, dict):
        raise RecordError(where, f'"{where}" must be an object, got {_type_name(msg)}')
    speaker = msg.get("from")
    role = _SHAREGPT_ROLES.get(speaker) if isinstance(speaker, str) else None
    if role is None:
        raise RecordError(
            f"{where}.from",
            f'field "{where}.from" is {speaker!r}; supported: {", ".join(_SHAREGPT_ROLES)}',
        )
    return role, _string(msg, "value", required=True, path=f"{where}.value")


def _sharegpt_turns(
    conversation: list[Any], where: str, system: str | None
) -> tuple[str | None, list[Turn], list[int]]:
    """The system prompt (a first system turn wins over ``system``), the turns and their indexes
    in ``conversation``; order is not checked."""
    turns: list[Turn] = []
    positions: list[int] = []
    for i, msg in enumerate(conversation):
        role, value = _sharegpt_message(msg, f"{where}[{i}]")
        if role == "system":
            if i != 0:
                raise RecordError(f"{where}[{i}].from", "a system turn is only allowed first")
            system = value
        else:
            turns.append(Turn(role, value))
            positions.append(i)
    return system, turns, positions


def _parse_sharegpt(obj: dict[str, Any], origin: Origin) -> Conversation:
    conversation = _array(obj, "conversations")
    system = _string(obj, "system", required=False) or None
    system, turns, positions = _sharegpt_turns(conversation, "conversations", system)
    _check_order(turns, "conversations", positions)
    return Conversation(
        turns=tuple(turns), origin=origin, format="sharegpt", system=system, **_common(obj)
    )


def _parse_text(obj: dict[str, Any], origin: Origin) -> Conversation:
    text = _string(obj, "text", required=True)
    return Conversation(turns=(), origin=origin, format="text", text=text, **_common(obj))


register(
    DataFormat("openai", "OpenAI chat: {messages: [{role, content}]}", ("messages",), _parse_openai)
)
register(
    DataFormat(
        "sharegpt",
        "ShareGPT: {conversations: [{from, value}], system?}",
        ("conversations",),
        _parse_sharegpt,
    )
)
register(
    DataFormat(
        "dolly",
        "Dolly: {instruction, context, response, category}",
        ("response",),
        _parse_dolly,
    )
)
register(
    DataFormat(
        "alpaca",
        "Alpaca: {instruction, input, output}",
        ("output", "instruction"),
        _parse_alpaca,
    )
)
register(DataFormat("text", "Plain text: .txt files or {text} records", ("text",), _parse_text))


def detect_format(obj: dict[str, Any]) -> str | None:
    for fmt in FORMATS.values():
        if any(key in obj for key in fmt.signature):
            return fmt.name
    return None


# --------------------------------------------------------------------------------- file reading


@dataclass
class ReadResult:
    """What reading one file gave: the valid records, every problem, the format used."""

    path: str
    format: str | None
    records: list[Conversation] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def _iter_items(path: Path, display: str) -> Iterator[tuple[Origin, Any] | Problem]:
    """Raw items of a file: (origin, parsed JSON value or text), or a Problem for unreadable
    parts. JSON arrays give element indexes; JSON Lines give line numbers."""
    try:
        text = path.read_text(encoding="utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        yield Problem(display, f"not valid UTF-8 (byte {exc.start})", line=line)
        return
    if path.suffix.lower() in {".txt", ".md"}:
        if text.strip():
            yield Origin(display), {"text": text}
        else:
            yield Problem(display, "file is empty")
        return
    stripped = text.lstrip(" \t\r\n")
    if not stripped:
        yield Problem(display, "file is empty")
        return
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            yield Problem(display, f"invalid JSON: {exc.msg} (column {exc.colno})", line=exc.lineno)
            return
        for i, item in enumerate(data):
            yield Origin(display, index=i), item
        return
    # Split on newlines only: JSON strings may hold U+2028, U+0085 or form feeds raw, which
    # str.splitlines() would treat as line breaks.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield Origin(display, line=lineno), json.loads(line)
        except json.JSONDecodeError as exc:
            yield Problem(display, f"invalid JSON: {exc.msg} (column {exc.colno})", line=lineno)


def require_file(path: Path) -> str:
    """The name a data file is reported under, or a DataError if it is not a readable file."""
    display = str(path)
    if not path.is_file():
        raise DataError(
            f"{display}: no such file" if not path.exists() else f"{display}: not a file"
        )
    return display


def iter_objects(path: Path, display: str) -> Iterator[tuple[Origin, dict[str, Any]] | Problem]:
    """The JSON objects of a file with their origins, and a Problem for anything else in it."""
    for item in _iter_items(path, display):
        if isinstance(item, Problem):
            yield item
            continue
        origin, value = item
        if not isinstance(value, dict):
            yield Problem(
                display,
                f"expected a JSON object, got {_type_name(value)}",
                line=origin.line,
                index=origin.index,
            )
            continue
        yield origin, value


def record_problem(origin: Origin, exc: RecordError) -> Problem:
    return Problem(origin.file, exc.message, line=origin.line, index=origin.index, field=exc.field)


def read_file(path: Path | str, fmt: str | None = None) -> ReadResult:
    """Read every record of one data file, detecting the format unless ``fmt`` is given."""
    path = Path(path)
    display = require_file(path)
    if fmt is not None and fmt not in FORMATS:
        raise DataError(f"unknown data format {fmt!r}", hint=f"known formats: {', '.join(FORMATS)}")
    result = ReadResult(path=display, format=fmt)
    for item in iter_objects(path, display):
        if isinstance(item, Problem):
            result.problems.append(item)
            continue
        origin, value = item
        if result.format is None:
            result.format = detect_format(value)
            if result.format is None:
                keys = ", ".join(sorted(value)[:8]) or "none"
                raise DataError(
                    f"{origin}: cannot tell the data format from the keys ({keys})",
                    hint="expected one of: "
                    + "; ".join(f.description for f in FORMATS.values())
                    + ". Or pass --format.",
                )
        try:
            result.records.append(FORMATS[result.format].parse(value, origin))
        except RecordError as exc:
            result.problems.append(record_problem(origin, exc))
    return result
