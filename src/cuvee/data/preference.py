"""Preference data for DPO, ORPO and KTO: a prompt with a better and a worse answer, or with one
answer labelled desirable or not, read from the common formats into one record."""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cuvee.data.formats import (
    Problem,
    RecordError,
    _alpaca_history,
    _array,
    _check_alternation,
    _check_order,
    _common,
    _openai_message,
    _openai_turns,
    _sharegpt_message,
    _sharegpt_turns,
    _string,
    _type_name,
    iter_objects,
    record_problem,
    require_file,
)
from cuvee.data.records import Conversation, Origin, Turn
from cuvee.data.validate import DataDeclaration, read_declaration
from cuvee.errors import DataError
from cuvee.licences import Licence

PAIR_KEYS = ("chosen", "rejected")
UNPAIRED_KEYS = ("completion", "label")


@dataclass(frozen=True, slots=True)
class PreferenceRecord:
    """One preference example.

    ``prompt`` ends with the user turn the answers reply to (system prompt, context and earlier
    turns kept) and holds neither answer. A pair has ``chosen`` and ``rejected``; an unpaired
    (KTO) record has ``completion`` and ``label`` (True: desirable). The record's category and
    split ride on ``prompt``, as on an instruction record."""

    prompt: Conversation
    chosen: str | None
    rejected: str | None
    completion: str | None
    label: bool | None
    origin: Origin
    format: str
    licence: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def is_pair(self) -> bool:
        return self.chosen is not None

    def answers(self) -> list[tuple[str, str]]:
        """(field, text) of each answer the record holds."""
        if self.is_pair:
            return [("chosen", self.chosen or ""), ("rejected", self.rejected or "")]
        return [("completion", self.completion or "")]


@dataclass(frozen=True)
class PreferenceFormat:
    name: str
    description: str
    # A record is in this format when it has ``prompt_key`` and, for pairs, "chosen" or
    # "rejected"; for unpaired records, "label". Checked in registry order, pairs first.
    prompt_key: str
    paired: bool
    parse: Callable[[dict[str, Any], Origin], PreferenceRecord]

    def matches(self, obj: dict[str, Any]) -> bool:
        if self.prompt_key not in obj:
            return False
        return any(k in obj for k in PAIR_KEYS) if self.paired else "label" in obj


PREFERENCE_FORMATS: dict[str, PreferenceFormat] = {}


def register(fmt: PreferenceFormat) -> PreferenceFormat:
    PREFERENCE_FORMATS[fmt.name] = fmt
    return fmt


def detect_preference_format(obj: dict[str, Any]) -> str | None:
    for fmt in PREFERENCE_FORMATS.values():
        if fmt.matches(obj):
            return fmt.name
    return None


# ----------------------------------------------------------------------------- record pieces


def _same_text(a: str, b: str) -> bool:
    # Answers that differ only in spacing teach the model nothing about preference.
    return re.sub(r"\s+", " ", a).strip() == re.sub(r"\s+", " ", b).strip()


def _answer(obj: dict[str, Any], key: str) -> str:
    """An answer: a string, one assistant message ({role, content} or {from, value}), or an
    array holding one such message."""
    if key not in obj:
        raise RecordError(key, f'field "{key}" is missing')
    value, where = obj[key], key
    if isinstance(value, list):
        if len(value) != 1:
            raise RecordError(
                key, f'field "{key}" must hold one assistant message, got {len(value)}'
            )
        value, where = value[0], f"{key}[0]"
    if isinstance(value, dict):
        sharegpt = "from" in value
        role, text = (_sharegpt_message if sharegpt else _openai_message)(value, where)
        if role != "assistant":
            raise RecordError(
                f"{where}.{'from' if sharegpt else 'role'}",
                f'"{where}" must be the assistant\'s answer, not a {role} message',
            )
    elif isinstance(value, str):
        text = value
    else:
        raise RecordError(
            where,
            f'field "{where}" must be a string or an assistant message, got {_type_name(value)}',
        )
    if not text.strip():
        raise RecordError(where, f'field "{where}" is empty')
    return text


def _label(obj: dict[str, Any]) -> bool:
    if "label" not in obj:
        raise RecordError("label", 'field "label" is missing')
    label = obj["label"]
    if not isinstance(label, bool):
        raise RecordError(
            "label",
            'field "label" must be true (desirable) or false (undesirable), '
            f"got {_type_name(label)} {json.dumps(label)}",
        )
    return label


def _end_with_user(turns: list[Turn], where: str, positions: list[int], answers: str) -> None:
    _check_alternation(turns, where, positions)
    if turns[-1].role != "user":
        raise RecordError(
            where,
            f'"{where}" must end with a user turn, the prompt the answers reply to; '
            f"the answers go in {answers}",
        )


def _messages_prompt(obj: dict[str, Any], key: str, answers: str) -> tuple[str | None, list[Turn]]:
    """A prompt given as OpenAI messages under ``key``."""
    system, turns, positions = _openai_turns(_array(obj, key), key)
    _end_with_user(turns, key, positions, answers)
    return system, turns


def _text_or_messages_prompt(obj: dict[str, Any], answers: str) -> tuple[str | None, list[Turn]]:
    """TRL's ``prompt``: a string, or OpenAI messages ending with the user."""
    if isinstance(obj.get("prompt"), list):
        return _messages_prompt(obj, "prompt", answers)
    return None, [Turn("user", _string(obj, "prompt", required=True))]


def _build(
    obj: dict[str, Any],
    origin: Origin,
    fmt: str,
    turns: list[Turn],
    system: str | None = None,
    context: str = "",
) -> PreferenceRecord:
    """The record, its answers read and checked against each other."""
    common = _common(obj)
    metadata = common.pop("metadata", {})
    prompt = Conversation(
        turns=tuple(turns),
        origin=origin,
        format=fmt,
        system=system,
        context=(context,) if context.strip() else (),
        **common,
    )
    paired = PREFERENCE_FORMATS[fmt].paired
    for key in UNPAIRED_KEYS if paired else PAIR_KEYS:
        if key in obj:
            raise RecordError(
                key,
                f'field "{key}" does not belong in a {"pair" if paired else "unpaired record"}: '
                "a record is a pair (chosen, rejected) or unpaired (completion, label)",
            )
    if not paired:
        completion = _answer(obj, "completion")
        return PreferenceRecord(
            prompt, None, None, completion, _label(obj), origin, fmt, metadata=metadata
        )
    chosen, rejected = _answer(obj, "chosen"), _answer(obj, "rejected")
    if _same_text(chosen, rejected):
        raise RecordError(
            "rejected", 'fields "chosen" and "rejected" are the same answer; a pair must differ'
        )
    return PreferenceRecord(prompt, chosen, rejected, None, None, origin, fmt, metadata=metadata)


_PAIR_ANSWERS = '"chosen" and "rejected"'

# ------------------------------------------------------------------------------------- formats


def _parse_sharegpt_pairs(obj: dict[str, Any], origin: Origin) -> PreferenceRecord:
    conversation = _array(obj, "conversations")
    system = _string(obj, "system", required=False) or None
    system, turns, positions = _sharegpt_turns(conversation, "conversations", system)
    _end_with_user(turns, "conversations", positions, _PAIR_ANSWERS)
    return _build(obj, origin, "sharegpt-pairs", turns, system)


def _parse_openai_pairs(obj: dict[str, Any], origin: Origin) -> PreferenceRecord:
    system, turns = _messages_prompt(obj, "messages", _PAIR_ANSWERS)
    return _build(obj, origin, "openai-pairs", turns, system)


def _parse_prompt_pairs(obj: dict[str, Any], origin: Origin) -> PreferenceRecord:
    system, turns = _text_or_messages_prompt(obj, _PAIR_ANSWERS)
    return _build(obj, origin, "prompt-pairs", turns, system)


def _parse_alpaca_pairs(obj: dict[str, Any], origin: Origin) -> PreferenceRecord:
    instruction = _string(obj, "instruction", required=True)
    context = _string(obj, "input", required=False)
    system = _string(obj, "system", required=False) or None
    turns = [*_alpaca_history(obj), Turn("user", instruction)]
    return _build(obj, origin, "alpaca-pairs", turns, system, context)


def _parse_kto_messages(obj: dict[str, Any], origin: Origin) -> PreferenceRecord:
    # The answer is the conversation's last assistant turn, as in LLaMA-Factory's KTO data.
    system, turns, positions = _openai_turns(_array(obj, "messages"), "messages")
    _check_order(turns, "messages", positions)
    answer = {**obj, "completion": turns[-1].content}
    return _build(answer, origin, "kto-messages", turns[:-1], system)


def _parse_kto_prompt(obj: dict[str, Any], origin: Origin) -> PreferenceRecord:
    system, turns = _text_or_messages_prompt(obj, '"completion"')
    return _build(obj, origin, "kto-prompt", turns, system)


register(
    PreferenceFormat(
        "sharegpt-pairs",
        "ShareGPT pairs: {conversations: [{from, value}], chosen, rejected, system?}",
        "conversations",
        True,
        _parse_sharegpt_pairs,
    )
)
register(
    PreferenceFormat(
        "openai-pairs",
        "OpenAI pairs: {messages: [{role, content}], chosen, rejected}",
        "messages",
        True,
        _parse_openai_pairs,
    )
)
register(
    PreferenceFormat(
        "prompt-pairs",
        "TRL pairs: {prompt: text or messages, chosen, rejected}",
        "prompt",
        True,
        _parse_prompt_pairs,
    )
)
register(
    PreferenceFormat(
        "alpaca-pairs",
        "Alpaca pairs: {instruction, input?, system?, history?, chosen, rejected}",
        "instruction",
        True,
        _parse_alpaca_pairs,
    )
)
register(
    PreferenceFormat(
        "kto-messages",
        "KTO: {messages: [... the answer last], label: true|false}",
        "messages",
        False,
        _parse_kto_messages,
    )
)
register(
    PreferenceFormat(
        "kto-prompt",
        "KTO: {prompt: text or messages, completion, label: true|false}",
        "prompt",
        False,
        _parse_kto_prompt,
    )
)


# --------------------------------------------------------------------------------- file reading


@dataclass
class PreferenceReadResult:
    """What reading one preference file gave: the valid records, every problem, the formats
    seen (in order of first appearance) and the licence declared for the file."""

    path: str
    declaration: DataDeclaration
    formats: list[str] = field(default_factory=list)
    records: list[PreferenceRecord] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def licence(self) -> Licence:
        return self.declaration.licence

    @property
    def pairs(self) -> list[PreferenceRecord]:
        return [r for r in self.records if r.is_pair]

    @property
    def unpaired(self) -> list[PreferenceRecord]:
        return [r for r in self.records if not r.is_pair]


def _undetected(obj: dict[str, Any]) -> str:
    keys = ", ".join(sorted(obj)[:8]) or "none"
    return f"cannot tell the preference format from the keys ({keys})"


def read_preferences(
    path: Path | str, fmt: str | None = None, *, licence: str | None = None
) -> PreferenceReadResult:
    """Read every record of one preference file, detecting each record's format unless ``fmt``
    is given; ``licence`` overrides the sidecar ``FILE.cuvee.yaml``, as for instruction data.

    A file may mix pairs and unpaired records."""
    path = Path(path)
    display = require_file(path)
    if fmt is not None and fmt not in PREFERENCE_FORMATS:
        raise DataError(
            f"unknown preference format {fmt!r}",
            hint=f"known formats: {', '.join(PREFERENCE_FORMATS)}",
        )
    declaration = read_declaration(path, licence)
    licence_id = declaration.licence.id if declaration.declared_by != "none" else None
    result = PreferenceReadResult(path=display, declaration=declaration)
    first = True
    for item in iter_objects(path, display):
        if isinstance(item, Problem):
            result.problems.append(item)
            continue
        origin, obj = item
        name = fmt or detect_preference_format(obj)
        if name is None:
            if first:
                raise DataError(
                    f"{origin}: {_undetected(obj)}",
                    hint="expected one of: "
                    + "; ".join(f.description for f in PREFERENCE_FORMATS.values())
                    + ". Or pass --format.",
                )
            result.problems.append(Problem(display, _undetected(obj), origin.line, origin.index))
            continue
        first = False
        if name not in result.formats:
            result.formats.append(name)
        try:
            record = PREFERENCE_FORMATS[name].parse(obj, origin)
        except RecordError as exc:
            result.problems.append(record_problem(origin, exc))
            continue
        if licence_id is not None:
            prompt = replace(record.prompt, licence=licence_id)
            record = replace(record, prompt=prompt, licence=licence_id)
        result.records.append(record)
    return result


_SNIFF_CHUNK = 1 << 16


def _first_object(path: Path) -> Any:
    """The first JSON value of a JSON array or JSON Lines file, reading no further than it;
    None if there is none."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text = ""
    size = _SNIFF_CHUNK
    with path.open("rb") as file:
        while True:
            chunk = file.read(size)
            size *= 2
            text += decoder.decode(chunk, final=not chunk)
            body = text.removeprefix("\ufeff").lstrip(" \t\r\n")
            if body.startswith("["):
                start = len(body) - len(body[1:].lstrip(" \t\r\n"))
                try:
                    return json.JSONDecoder().raw_decode(body, start)[0]
                except json.JSONDecodeError:
                    pass  # not all of the first element read yet, or not JSON at all
            elif "\n" in body or not chunk:
                try:
                    return json.loads(body.split("\n", 1)[0])
                except json.JSONDecodeError:
                    return None
            if not chunk:
                return None


def is_preference_file(path: Path | str) -> bool:
    """Whether a file holds preference data, judged from its first record alone (cheap): how
    `cuvee data check` and `cuvee train` tell it from instruction data."""
    path = Path(path)
    if not path.is_file() or path.suffix.lower() in {".txt", ".md"}:
        return False
    first = _first_object(path)
    return isinstance(first, dict) and detect_preference_format(first) is not None
