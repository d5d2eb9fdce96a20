"""Preference data (DPO, ORPO, KTO): every format read to the same record, each fault reported at
its file:line, the licence carried, and `cuvee data check` on preference files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cuvee.data.formats import read_file
from cuvee.data.preference import (
    PREFERENCE_FORMATS,
    PreferenceRecord,
    is_preference_file,
    read_preferences,
)
from cuvee.data.records import Turn
from cuvee.errors import DataError
from helpers import run_cli

SYSTEM = "Answer in one sentence."
Q1, A1 = "What is the capital of France?", "Paris is the capital of France."
Q2 = "And of Italy?"
CHOSEN = "Rome is the capital of Italy."
REJECTED = "Italy has no capital city."

# One preference, a system prompt and one earlier exchange, written in each pair format.
PAIRS: dict[str, dict[str, Any]] = {
    "sharegpt-pairs": {
        "conversations": [
            {"from": "system", "value": SYSTEM},
            {"from": "human", "value": Q1},
            {"from": "gpt", "value": A1},
            {"from": "human", "value": Q2},
        ],
        "chosen": {"from": "gpt", "value": CHOSEN},
        "rejected": {"from": "gpt", "value": REJECTED},
    },
    "openai-pairs": {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": Q1},
            {"role": "assistant", "content": A1},
            {"role": "user", "content": [{"type": "text", "text": Q2}]},
        ],
        "chosen": {"role": "assistant", "content": CHOSEN},
        "rejected": REJECTED,
    },
    "prompt-pairs": {
        "prompt": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": Q1},
            {"role": "assistant", "content": A1},
            {"role": "user", "content": Q2},
        ],
        "chosen": [{"role": "assistant", "content": CHOSEN}],
        "rejected": [{"role": "assistant", "content": REJECTED}],
    },
    "alpaca-pairs": {
        "system": SYSTEM,
        "history": [[Q1, A1]],
        "instruction": Q2,
        "chosen": CHOSEN,
        "rejected": REJECTED,
    },
}

# The chosen answer as a desirable single answer, in each unpaired (KTO) format.
UNPAIRED: dict[str, dict[str, Any]] = {
    "kto-messages": {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": Q1},
            {"role": "assistant", "content": A1},
            {"role": "user", "content": Q2},
            {"role": "assistant", "content": CHOSEN},
        ],
        "label": True,
    },
    "kto-prompt": {
        "prompt": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": Q1},
            {"role": "assistant", "content": A1},
            {"role": "user", "content": Q2},
        ],
        "completion": CHOSEN,
        "label": True,
    },
}


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    """One row a line; a string row is written as it is (blank or broken lines)."""
    text = "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n"
    path.write_text(text, encoding="utf-8")
    return path


def essence(record: PreferenceRecord) -> tuple:
    """What training sees of a record: everything but where and in which format it was read."""
    p = record.prompt
    return (p.system, p.turns, p.context, record.chosen, record.rejected, record.completion)


def only(result) -> PreferenceRecord:
    assert result.problems == []
    (record,) = result.records
    return record


def test_every_format_is_tested() -> None:
    assert set(PAIRS) | set(UNPAIRED) == set(PREFERENCE_FORMATS)


@pytest.mark.parametrize("fmt", sorted(PAIRS))
@pytest.mark.parametrize("container", ["jsonl", "json"])
def test_pair_formats_read_to_the_same_record(tmp_path: Path, fmt: str, container: str) -> None:
    path = tmp_path / f"pairs.{container}"
    if container == "json":
        path.write_text(json.dumps([PAIRS[fmt]], indent=2), encoding="utf-8")
    else:
        write_jsonl(path, [PAIRS[fmt]])

    result = read_preferences(path)
    record = only(result)

    assert result.formats == [fmt]
    assert record.format == fmt and record.prompt.format == fmt
    assert record.is_pair and record.label is None and record.completion is None
    expected_turns = (Turn("user", Q1), Turn("assistant", A1), Turn("user", Q2))
    assert essence(record) == (SYSTEM, expected_turns, (), CHOSEN, REJECTED, None)
    assert str(record.origin) == (f"{path}:1" if container == "jsonl" else f"{path}[0]")
    assert is_preference_file(path)


@pytest.mark.parametrize("fmt", sorted(UNPAIRED))
def test_unpaired_formats_read_to_the_same_record(tmp_path: Path, fmt: str) -> None:
    rejected = {**UNPAIRED[fmt], "label": False}
    path = write_jsonl(tmp_path / "kto.jsonl", [UNPAIRED[fmt], rejected])

    result = read_preferences(path)

    assert result.problems == [] and result.formats == [fmt]
    good, bad = result.records
    assert not good.is_pair and good.chosen is None and good.rejected is None
    assert (good.label, bad.label) == (True, False)
    expected_turns = (Turn("user", Q1), Turn("assistant", A1), Turn("user", Q2))
    assert essence(good) == (SYSTEM, expected_turns, (), None, None, CHOSEN)
    assert essence(bad) == essence(good)


def test_text_prompt_and_alpaca_input(tmp_path: Path) -> None:
    rows = [
        {"prompt": Q2, "chosen": CHOSEN, "rejected": REJECTED},
        {"instruction": Q2, "chosen": CHOSEN, "rejected": REJECTED},
        {"prompt": Q2, "completion": CHOSEN, "label": True},
        {
            "instruction": "Summarise.",
            "input": "A long text.",
            "chosen": "Short.",
            "rejected": "?!",
        },
    ]
    result = read_preferences(write_jsonl(tmp_path / "p.jsonl", rows))

    assert result.problems == []
    assert result.formats == ["prompt-pairs", "alpaca-pairs", "kto-prompt"]
    text, alpaca, kto, with_input = result.records
    assert (
        essence(text) == essence(alpaca) == (None, (Turn("user", Q2),), (), CHOSEN, REJECTED, None)
    )
    assert kto.prompt.turns == (Turn("user", Q2),) and kto.completion == CHOSEN
    # Alpaca's input is context to the instruction, shown with it as for instruction data.
    assert with_input.prompt.context == ("A long text.",)
    assert with_input.prompt.messages()[-1] == {
        "role": "user",
        "content": "Summarise.\n\nA long text.",
    }


def test_category_split_and_metadata_are_kept(tmp_path: Path) -> None:
    row = {
        **PAIRS["alpaca-pairs"],
        "split": "heldout",
        "category": "qa",
        "metadata": {"checker": "x"},
    }
    record = only(read_preferences(write_jsonl(tmp_path / "p.jsonl", [row])))
    assert (record.prompt.split, record.prompt.category) == ("heldout", "qa")
    assert record.metadata == {"checker": "x"}


# ------------------------------------------------------------------------------------ faults

GOOD_PAIR = {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven."}
GOOD_KTO = {"prompt": "Name a colour.", "completion": "Blue.", "label": True}

# (row, field, message fragment): each a record that must be refused.
FAULTS: list[tuple[dict[str, Any], str, str]] = [
    (
        {**GOOD_PAIR, "rejected": "Blue. "},
        "rejected",
        '"chosen" and "rejected" are the same answer',
    ),
    ({**GOOD_PAIR, "chosen": ""}, "chosen", 'field "chosen" is empty'),
    ({**GOOD_PAIR, "rejected": " \n\t"}, "rejected", 'field "rejected" is empty'),
    (
        {**PAIRS["sharegpt-pairs"], "chosen": {"from": "gpt", "value": "  "}},
        "chosen.value",
        'field "chosen.value" is empty',
    ),
    ({"prompt": "Name a colour.", "chosen": "Blue."}, "rejected", 'field "rejected" is missing'),
    ({"instruction": "Hi", "rejected": "No."}, "chosen", 'field "chosen" is missing'),
    ({"prompt": "Name a colour.", "label": True}, "completion", 'field "completion" is missing'),
    (
        {**PAIRS["openai-pairs"], "messages": PAIRS["openai-pairs"]["messages"][:3]},
        "messages",
        '"messages" must end with a user turn',
    ),
    (
        {
            "conversations": [{"from": "human", "value": Q1}, {"from": "gpt", "value": A1}],
            "chosen": "x",
            "rejected": "y",
        },
        "conversations",
        '"conversations" must end with a user turn',
    ),
    (
        {**UNPAIRED["kto-messages"], "messages": UNPAIRED["kto-messages"]["messages"][:4]},
        "messages",
        '"messages" must end with an assistant turn',
    ),
    ({**GOOD_KTO, "label": "true"}, "label", 'field "label" must be true (desirable) or false'),
    ({**GOOD_KTO, "label": 1}, "label", "got number 1"),
    ({**GOOD_PAIR, "label": True}, "label", 'field "label" does not belong in a pair'),
    (
        {**GOOD_PAIR, "chosen": {"role": "user", "content": "Blue."}},
        "chosen.role",
        "must be the assistant's answer, not a user message",
    ),
    (
        {**GOOD_PAIR, "chosen": [{"role": "assistant", "content": "a"}] * 2},
        "chosen",
        "must hold one assistant message, got 2",
    ),
]


@pytest.mark.parametrize(("row", "field", "message"), FAULTS, ids=lambda v: str(v)[:40])
def test_each_fault_is_reported_at_its_line(
    tmp_path: Path, row: dict[str, Any], field: str, message: str
) -> None:
    # The bad record on line 4, after a blank line, between good records of both kinds.
    path = write_jsonl(tmp_path / "p.jsonl", [GOOD_PAIR, GOOD_KTO, "", row, GOOD_PAIR])

    result = read_preferences(path)

    (problem,) = result.problems
    assert (problem.location, problem.field, problem.severity) == (f"{path}:4", field, "error")
    assert message in problem.message
    assert str(problem).startswith(f"{path}:4: ")
    assert [str(r.origin) for r in result.records] == [f"{path}:1", f"{path}:2", f"{path}:5"]


def test_faults_in_a_json_array_name_the_element(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps([GOOD_PAIR, {**GOOD_PAIR, "chosen": "Seven."}, 3]), "utf-8")

    problems = [str(p) for p in read_preferences(path).problems]

    assert problems == [
        f'{path}[1]: fields "chosen" and "rejected" are the same answer; a pair must differ',
        f"{path}[2]: expected a JSON object, got number",
    ]


def test_broken_json_and_unknown_records_later_in_the_file(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [GOOD_PAIR, '{"prompt": ', {"text": "hello"}])

    problems = [str(p) for p in read_preferences(path).problems]

    assert problems[0].startswith(f"{path}:2: invalid JSON")
    assert problems[1] == f"{path}:3: cannot tell the preference format from the keys (text)"


def test_a_file_that_is_not_preference_data(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "sft.jsonl", [{"instruction": "Hi", "output": "Hello."}])
    assert not is_preference_file(path)
    with pytest.raises(DataError, match=r"sft.jsonl:1: cannot tell the preference format"):
        read_preferences(path)
    with pytest.raises(DataError, match="unknown preference format 'alpaca'"):
        read_preferences(path, "alpaca")


def test_format_can_be_forced(tmp_path: Path) -> None:
    # Forced, a record missing its pair keys is reported rather than undetectable.
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hi"}])
    (problem,) = read_preferences(path, "prompt-pairs").problems
    assert str(problem) == f'{path}:1: field "chosen" is missing'


# ---------------------------------------------------------------------------- sniff, licence


def test_is_preference_file_reads_a_large_first_record(tmp_path: Path) -> None:
    big = {**PAIRS["alpaca-pairs"], "instruction": "word " * 50_000}  # over one read chunk
    array = tmp_path / "big.json"
    array.write_text("\ufeff[\n  " + json.dumps(big) + ",\n  {}\n]", encoding="utf-8")
    assert is_preference_file(array)
    sft = tmp_path / "sft.json"
    sft.write_text(json.dumps([{"instruction": "word " * 50_000, "output": "x"}]), "utf-8")
    assert not is_preference_file(sft)
    assert not is_preference_file(tmp_path / "missing.jsonl")
    (tmp_path / "notes.txt").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    assert not is_preference_file(tmp_path / "notes.txt")
    (tmp_path / "empty.json").write_text("[]")
    assert not is_preference_file(tmp_path / "empty.json")


def test_the_licence_sidecar_travels_with_the_records(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [GOOD_PAIR, GOOD_KTO])
    assert read_preferences(path).records[0].licence is None

    (tmp_path / "p.jsonl.cuvee.yaml").write_text("licence: CC-BY-NC-4.0\nauthors: [Ana]\n")
    result = read_preferences(path)

    assert result.licence.id == "CC-BY-NC-4.0" and result.licence.commercial_use is False
    assert result.declaration.authors == ("Ana",)
    assert [(r.licence, r.prompt.licence) for r in result.records] == [("CC-BY-NC-4.0",) * 2] * 2
    assert read_preferences(path, licence="MIT").records[1].licence == "MIT"


# -------------------------------------------------------------------------------- data check


def good_file(tmp_path: Path) -> Path:
    rows = [
        {"prompt": "Name a colour.", "chosen": "Blue is a colour.", "rejected": "Seven."},
        {"prompt": "Name a fruit.", "chosen": "An apple.", "rejected": "A chair, probably."},
        {"prompt": "Name a colour.", "chosen": "Blue is a colour.", "rejected": "Seven."},
        {"prompt": "Name a colour.", "chosen": "Seven.", "rejected": "Blue is a colour."},
        {"prompt": "Say hi.", "completion": "Hello!", "label": True},
        {"prompt": "Say hi.", "completion": "Go away.", "label": False},
    ]
    path = write_jsonl(tmp_path / "prefs.jsonl", rows)
    (tmp_path / "prefs.jsonl.cuvee.yaml").write_text("licence: CC-BY-NC-4.0\n")
    return path


def test_check_good_preference_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = good_file(tmp_path)

    code, out, err = run_cli(capsys, "data", "check", str(path))

    assert code == 0, err
    assert "records:    6 valid, 0 errors, 3 warnings" in out
    assert "preference: 4 pairs, 1 desirable and 1 undesirable unpaired; pairs and unpaired" in out
    assert "formats:    prompt-pairs 4, kto-prompt 2" in out
    assert "duplicates: 1, 1 contradicting" in out
    assert "bias:       chosen longer than rejected in 50% of pairs" in out
    # "Name a colour." is 14 characters: 3 tokens at four characters a token.
    assert "prompt:     p50 3, p95 3, max 3 tokens (estimated)" in out
    assert f"licence:    {path}: CC-BY-NC-4.0 (NON-COMMERCIAL)" in out
    assert f"warning: {path}:3: duplicate of {path}:1" in err
    assert f"warning: {path}:4: contradicts {path}:1 (chosen and rejected swapped)" in err
    assert f"warning: {path}: mixes 4 pairs and 2 unpaired records" in err
    assert "inherits its non-commercial restriction" in err


def test_check_bad_preference_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_jsonl(
        tmp_path / "bad.jsonl",
        [GOOD_PAIR, {**GOOD_PAIR, "chosen": "Seven."}, "", {**GOOD_KTO, "label": "no"}],
    )

    code, out, err = run_cli(capsys, "data", "check", str(path))

    assert code == 1
    assert f'error: {path}:2: fields "chosen" and "rejected" are the same answer' in err
    assert f'error: {path}:4: field "label" must be true (desirable) or false' in err
    assert "records:    1 valid, 2 errors" in out
    assert "Traceback" not in err


def test_check_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "data", "check", str(good_file(tmp_path)), "--json")
    summary = json.loads(out)
    assert code == 0 and summary["ok"] is True and summary["kind"] == "preference"
    assert (summary["records"], summary["pairs"], summary["unpaired"]) == (
        6,
        4,
        {"desirable": 1, "undesirable": 1},
    )
    assert summary["mixed"] is True
    assert summary["formats"] == {"prompt-pairs": 4, "kto-prompt": 2}
    assert (summary["duplicates"], summary["contradictions"]) == (1, 1)
    assert summary["licence"]["commercial_use"] is False
    assert summary["lengths"]["chosen"]["max"] == len("Blue is a colour.") // 4
    assert summary["lengths"]["completion"]["max"] == len("Go away.") // 4

    bad = write_jsonl(tmp_path / "bad.jsonl", [{**GOOD_PAIR, "rejected": ""}])
    code, out, _ = run_cli(capsys, "data", "check", str(bad), "--json")
    summary = json.loads(out)
    assert code == 1 and summary["ok"] is False and summary["records"] == 0
    assert [(e["line"], e["field"]) for e in summary["errors"]] == [(1, "rejected")]


def test_check_flags_over_long_sequences(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    row = {"prompt": "p" * 400, "chosen": "c" * 40, "rejected": "r" * 800}
    path = write_jsonl(tmp_path / "long.jsonl", [row])
    code, out, _ = run_cli(capsys, "data", "check", str(path), "--max-tokens", "150", "--json")
    summary = json.loads(out)
    assert code == 0 and summary["over_max_length"] == 1
    assert summary["lengths"]["sequence"]["max"] == 300
    assert summary["warnings"][0]["field"] == "rejected"


def test_check_format_flag_and_mixed_kinds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prefs = write_jsonl(tmp_path / "p.jsonl", [GOOD_PAIR])
    sft = write_jsonl(tmp_path / "s.jsonl", [{"instruction": "Hi", "output": "Hello."}])

    code, out, _ = run_cli(capsys, "data", "check", str(prefs), "--format", "prompt-pairs")
    assert code == 0 and "formats:    prompt-pairs 1" in out
    # An instruction format keeps the instruction reader, which finds no instruction here.
    code, _, err = run_cli(capsys, "data", "check", str(prefs), "--format", "alpaca")
    assert code == 1 and f'{prefs}:1: field "instruction" is missing' in err
    code, _, err = run_cli(capsys, "data", "check", str(prefs), str(sft))
    assert code != 0 and "preference data" in err and "instruction data" in err
    assert read_file(sft).records  # the instruction reader is not affected


def test_check_counts_answers_as_what_they_add_to_the_prompt(tmp_path: Path) -> None:
    from cuvee.data.preference_check import check_preference_files

    def words_and_two_specials(conversations: list) -> list[int]:
        return [2 + sum(len(m["content"].split()) for m in c.messages()) for c in conversations]

    row = {"prompt": "one two three", "chosen": "four five", "rejected": "six seven eight nine"}
    path = write_jsonl(tmp_path / "p.jsonl", [row])

    report = check_preference_files([path], count_tokens=words_and_two_specials, max_tokens=8)

    lengths = {k: v.max for k, v in report.lengths.items() if v is not None}
    assert lengths == {"prompt": 5, "chosen": 2, "rejected": 4, "sequence": 9}
    assert report.lengths["prompt"].unit == "tokens"
    assert report.over_max == 1 and report.chosen_longer == 0.0
