"""`cuvee data check | starter | augment`, driven in-process through the click command."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import cuvee.cli
from cuvee.cli import cli
from cuvee.data.constraints import check_constraint
from cuvee.data.formats import read_file
from cuvee.data.starter import CATEGORIES as STARTER_CATEGORIES

DOLLY = [
    {
        "instruction": "Why do leaves change colour in autumn?",
        "context": "",
        "response": "As days shorten, trees stop making chlorophyll, the green pigment that "
        "captures light. As it breaks down, yellow and orange pigments that were there all "
        "along become visible. Some trees also make red pigments in the autumn.",
        "category": "open_qa",
    },
    {
        "instruction": "Give me ideas for a rainy weekend.",
        "context": "",
        "response": "You could bake bread from scratch, start a jigsaw puzzle, visit a museum, "
        "read a novel you have put off, or cook a big pot of soup for the week ahead.",
        "category": "brainstorming",
    },
    {
        "instruction": "When did the library open?",
        "context": "The town library opened in 1911 and moved to its current building in 1968.",
        "response": "The library opened in 1911. It moved to its current building in 1968.",
        "category": "closed_qa",
    },
    {
        "instruction": "Explain what a compiler does.",
        "context": "",
        "response": "A compiler translates source code written by people into machine code a "
        "processor can run. Along the way it checks the program for errors and often "
        "optimises it so that it runs faster.",
        "category": "open_qa",
    },
]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CUVEE_HOME", "CUVEE_CONFIG", "CUVEE_MAX_RECORD_TOKENS"):
        monkeypatch.delenv(name, raising=False)


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    text = "\n".join(json.dumps(r) if isinstance(r, dict) else r for r in rows) + "\n"
    path.write_text(text, encoding="utf-8")
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def invoke(tmp_path: Path, *args: str) -> Result:
    """Run `cuvee --home ... data ARGS` with CliRunner (stdout and stderr kept apart)."""
    return CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "data", *args])


def run_main(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str):
    """Run through `cuvee.cli.main`, which turns CuveeError into a message and an exit code."""
    with pytest.raises(SystemExit) as exc:
        cuvee.cli.main(["--home", str(tmp_path / "home"), "data", *args])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def broken_dolly(path: Path) -> Path:
    """A Dolly file with a missing response on line 37 and a wrong type on line 40."""
    rows: list[Any] = [DOLLY[0], "", ""]
    rows += [DOLLY[i % 4] if i % 2 else "" for i in range(33)]
    assert len(rows) == 36
    rows += [
        {"instruction": "Where is the response?", "context": "", "category": "open_qa"},
        DOLLY[1],
        "",
        {"instruction": "Typed wrong", "response": 12, "category": "open_qa"},
    ]
    return write_jsonl(path, rows)


# ------------------------------------------------------------------------------- data check


def test_check_good_file(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", DOLLY)
    result = invoke(tmp_path, "check", str(path))
    assert result.exit_code == 0, result.output
    assert "records:    4 valid, 0 errors, 0 warnings" in result.stdout
    assert "formats:    dolly 4" in result.stdout
    assert "duplicates: 0" in result.stdout
    assert f"licence:    {path}: unknown (commercial use unknown)" in result.stdout
    assert "error:" not in result.stderr


def test_check_broken_file_exits_1_naming_file_line_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = broken_dolly(tmp_path / "train.jsonl")

    code, out, err = run_main(tmp_path, capsys, "check", str(path))

    assert code == 1
    assert f'error: {path}:37: field "response" is missing' in err
    assert f'error: {path}:40: field "response" must be a string, got number' in err
    assert "2 errors" in out
    assert "Traceback" not in err


def test_check_json_is_one_object(tmp_path: Path) -> None:
    path = broken_dolly(tmp_path / "train.jsonl")
    n_good = sum(1 for line in path.read_text().splitlines() if line.strip()) - 2

    result = invoke(tmp_path, "check", str(path), "--json")

    assert result.exit_code == 1
    summary = json.loads(result.stdout)  # fails on anything but exactly one JSON document
    assert isinstance(summary, dict)
    assert {"records", "errors", "formats", "licence"} <= set(summary)
    assert summary["ok"] is False
    assert summary["records"] == n_good
    assert summary["formats"] == {"dolly": n_good}
    assert [(e["file"], e["line"], e["field"]) for e in summary["errors"]] == [
        (str(path), 37, "response"),
        (str(path), 40, "response"),
    ]
    for error in summary["errors"]:
        assert {"file", "line", "field", "message"} <= set(error)
        assert error["severity"] == "error"
    assert summary["errors"][0]["message"] == 'field "response" is missing'
    assert set(summary["licence"]) == {"files", "commercial_use"}
    assert summary["licence"]["files"][str(path)]["id"] == "unknown"
    assert summary["licence"]["commercial_use"] is None


def test_check_json_good_file_exits_0(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", DOLLY)
    result = invoke(tmp_path, "check", str(path), "--json")
    assert result.exit_code == 0
    summary = json.loads(result.stdout)
    assert summary["ok"] is True
    assert summary["records"] == 4
    assert summary["errors"] == []
    assert summary["categories"] == {"open_qa": 2, "brainstorming": 1, "closed_qa": 1}


def test_check_never_modifies_its_input(tmp_path: Path) -> None:
    path = broken_dolly(tmp_path / "train.jsonl")
    good = write_jsonl(tmp_path / "good.jsonl", DOLLY)
    before = {p: sha256(p) for p in (path, good)}
    listing = sorted(tmp_path.iterdir())

    assert invoke(tmp_path, "check", str(path), str(good)).exit_code == 1
    assert invoke(tmp_path, "check", str(good), "--json").exit_code == 0
    assert invoke(tmp_path, "check", str(good), "--format", "dolly").exit_code == 0

    assert {p: sha256(p) for p in (path, good)} == before
    assert sorted(p for p in tmp_path.iterdir() if p.name != "home") == listing


def test_check_licence_flag_non_commercial(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", DOLLY)
    result = invoke(tmp_path, "check", str(path), "--licence", "CC-BY-NC-4.0", "--json")
    assert result.exit_code == 0
    summary = json.loads(result.stdout)
    assert summary["licence"]["commercial_use"] is False
    assert summary["licence"]["files"][str(path)]["id"] == "CC-BY-NC-4.0"
    assert summary["licence"]["files"][str(path)]["commercial_use"] is False
    assert summary["files"][0]["licence_declared_by"] == "--licence"

    human = invoke(tmp_path, "check", str(path), "--licence", "CC-BY-NC-4.0")
    assert human.exit_code == 0
    assert "CC-BY-NC-4.0 (NON-COMMERCIAL)" in human.stdout
    assert "non-commercial restriction" in human.stderr


def test_check_licence_from_sidecar(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", DOLLY)
    sidecar = tmp_path / "train.jsonl.cuvee.yaml"
    sidecar.write_text("licence: MIT\nauthors: [Ana]\n", encoding="utf-8")

    result = invoke(tmp_path, "check", str(path), "--json")

    assert result.exit_code == 0
    summary = json.loads(result.stdout)
    assert summary["licence"]["files"][str(path)]["id"] == "MIT"
    assert summary["licence"]["commercial_use"] is True
    (entry,) = summary["files"]
    assert entry["authors"] == ["Ana"]
    assert entry["licence_declared_by"] == str(sidecar)

    # --licence wins over the sidecar.
    flagged = json.loads(
        invoke(tmp_path, "check", str(path), "--licence", "CC-BY-NC-4.0", "--json").stdout
    )
    assert flagged["licence"]["files"][str(path)]["id"] == "CC-BY-NC-4.0"
    assert flagged["files"][0]["authors"] == ["Ana"]


def test_check_sidecar_with_unknown_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", DOLLY)
    (tmp_path / "train.jsonl.cuvee.yaml").write_text("licence: MIT\nlicense_url: x\n")
    code, _, err = run_main(tmp_path, capsys, "check", str(path))
    assert code == 1
    assert "unknown key(s) license_url" in err


def test_check_duplicates_and_near_empty_are_warnings(tmp_path: Path) -> None:
    rows: list[Any] = [
        DOLLY[0],
        DOLLY[1],
        # Same text with other case and spacing: still a duplicate.
        {**DOLLY[0], "instruction": "  why do LEAVES change colour   in autumn? "},
        {"instruction": "Is the sky blue?", "context": "", "response": "-", "category": "x"},
        {"instruction": "What is HR?", "context": "", "response": "N/A", "category": "x"},
        # Short is not empty: a two-letter answer is a real answer.
        {"instruction": "Which team handles payroll?", "context": "", "response": "HR"},
    ]
    path = write_jsonl(tmp_path / "train.jsonl", rows)

    result = invoke(tmp_path, "check", str(path), "--json")

    assert result.exit_code == 0
    summary = json.loads(result.stdout)
    assert summary["ok"] is True
    assert summary["errors"] == []
    assert summary["records"] == 6
    assert summary["duplicates"] == 1
    warnings = summary["warnings"]
    assert all(w["severity"] == "warning" for w in warnings)
    assert {"file": str(path), "line": 3, "message": f"duplicate of {path}:1"}.items() <= (
        next(w for w in warnings if w["message"].startswith("duplicate")).items()
    )
    near_empty = [w for w in warnings if "nearly empty" in w["message"]]
    assert [(w["line"], w["field"]) for w in near_empty] == [
        (4, "turn 1 (assistant)"),
        (5, "turn 1 (assistant)"),
    ]

    human = invoke(tmp_path, "check", str(path))
    assert human.exit_code == 0
    assert f"warning: {path}:3: duplicate of {path}:1" in human.stderr
    assert f"warning: {path}:4: turn 1 (assistant) is nearly empty ('-')" in human.stderr
    assert f"warning: {path}:5: turn 1 (assistant) is nearly empty ('N/A')" in human.stderr


def test_check_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.jsonl"
    code, _, err = run_main(tmp_path, capsys, "check", str(missing))
    assert code == 1
    assert f"error: {missing}: no such file" in err
    assert "Traceback" not in err


def test_check_unknown_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_jsonl(tmp_path / "odd.jsonl", [{"prompt": "p", "completion": "c"}])
    code, _, err = run_main(tmp_path, capsys, "check", str(path))
    assert code == 1
    assert f"error: {path}:1: cannot tell the data format from the keys (completion, prompt)" in err
    assert "hint:" in err and "--format" in err


def test_check_length_percentiles_are_nearest_rank(tmp_path: Path) -> None:
    # Six text records of 4, 8, ..., 24 characters: 1..6 estimated tokens.
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "abcd" * n} for n in range(1, 7)])
    summary = json.loads(invoke(tmp_path, "check", str(path), "--json").stdout)
    assert summary["lengths"]["max"] == 6
    assert summary["lengths"]["p50"] == 3


# ----------------------------------------------------------------------------- data starter


def starter_rows(tmp_path: Path, split: str) -> list[dict[str, Any]]:
    out = tmp_path / f"starter-{split}.jsonl"
    result = invoke(tmp_path, "starter", "-o", str(out), "--split", split)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def test_starter_export(tmp_path: Path) -> None:
    out = tmp_path / "f.jsonl"

    result = invoke(tmp_path, "starter", "-o", str(out))

    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert f"wrote {len(rows)} records to {out}" in result.stdout
    assert all({"instruction", "response", "category"} <= set(r) for r in rows)
    sidecar = tmp_path / "f.jsonl.cuvee.yaml"
    assert "licence: Apache-2.0" in sidecar.read_text(encoding="utf-8")
    categories = {r["category"] for r in rows}
    missing = set(STARTER_CATEGORIES) - categories
    assert not missing, f"starter lacks categories {sorted(missing)}"
    assert len(rows) >= 600


def test_starter_heldout_is_disjoint_from_train(tmp_path: Path) -> None:
    train = starter_rows(tmp_path, "train")
    heldout = starter_rows(tmp_path, "heldout")
    everything = starter_rows(tmp_path, "all")

    assert heldout, "the starter set has no held-out slice"
    assert all(r.get("split") == "heldout" for r in heldout)
    assert all(r.get("split", "train") == "train" for r in train)
    train_instructions = {r["instruction"] for r in train}
    heldout_instructions = {r["instruction"] for r in heldout}
    assert not train_instructions & heldout_instructions
    assert len(train) + len(heldout) == len(everything)


def test_starter_export_checks_clean(tmp_path: Path) -> None:
    out = tmp_path / "starter.jsonl"
    assert invoke(tmp_path, "starter", "-o", str(out)).exit_code == 0

    result = invoke(tmp_path, "check", str(out), "--json")

    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["errors"] == []
    assert summary["records"] == len(out.read_text(encoding="utf-8").splitlines())
    assert summary["formats"] == {"dolly": summary["records"]}
    # The sidecar written next to the export declares the licence.
    assert summary["licence"]["files"][str(out)]["id"] == "Apache-2.0"
    assert summary["licence"]["commercial_use"] is True


def test_starter_export_as_openai(tmp_path: Path) -> None:
    out = tmp_path / "starter.openai.jsonl"
    result = invoke(tmp_path, "starter", "-o", str(out), "--format", "openai")
    assert result.exit_code == 0, result.output
    read = read_file(out)
    assert read.format == "openai"
    assert read.problems == []
    assert len(read.records) == len(out.read_text(encoding="utf-8").splitlines())


# ----------------------------------------------------------------------------- data augment


def test_augment_writes_checkable_variants(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "train.jsonl", DOLLY)
    before = sha256(src)
    out = tmp_path / "train.aug.jsonl"

    result = invoke(tmp_path, "augment", str(src), "-o", str(out), "--per-record", "2", "--json")

    assert result.exit_code == 0, result.output
    assert sha256(src) == before
    summary = json.loads(result.stdout)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert summary["input"] == 4
    assert summary["written"] == len(rows) == 4 + summary["variants"]
    variants = [r for r in rows if "constraint" in r.get("metadata", {})]
    assert len(variants) == summary["variants"] > 0
    for row in variants:
        messages = row["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"]
        constraint = row["metadata"]["constraint"]
        assert check_constraint(constraint["id"], messages[-1]["content"], constraint["kwargs"])
        assert row["metadata"]["augmented_from"].startswith(f"{src}:")
    # The output is itself valid OpenAI data.
    read = read_file(out)
    assert read.format == "openai"
    assert read.problems == []
    assert len(read.records) == len(rows)


def test_augment_no_originals(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "train.jsonl", DOLLY)
    out = tmp_path / "only.jsonl"
    result = invoke(tmp_path, "augment", str(src), "-o", str(out), "--no-originals")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows
    assert all("constraint" in r["metadata"] for r in rows)


def test_augment_broken_input_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = broken_dolly(tmp_path / "train.jsonl")
    before = sha256(src)
    listing = sorted(tmp_path.iterdir())
    out = tmp_path / "aug.jsonl"

    code, _, err = run_main(tmp_path, capsys, "augment", str(src), "-o", str(out))

    assert code != 0
    assert not out.exists()
    assert sorted(p for p in tmp_path.iterdir() if p.name != "home") == listing
    assert sha256(src) == before
    assert f"{src}:37" in err
    assert "nothing written" in err


def test_augment_text_input_output_is_readable(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "corpus.jsonl", [{"text": "A document about bread."}])
    out = tmp_path / "aug.jsonl"
    result = invoke(tmp_path, "augment", str(src), "-o", str(out))
    # Plain text has no instruction to constrain: it passes through unchanged, and the output
    # reads back without problems.
    assert result.exit_code == 0, result.output
    assert "0 variants" in result.output
    assert read_file(out).problems == []
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows == [{"text": "A document about bread."}]
