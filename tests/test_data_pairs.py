"""`cuvee data pairs`: preference pairs from a model's own answers, scored by checks that need no
judge, and from `cuvee data augment` variants. The model is a stored manifest with a GGUF export
on record, run by a scripted engine (each answer chosen by its prompt and seed), so every
score, pair and label is known in advance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cuvee.config import load_settings
from cuvee.data.preference import read_preferences
from cuvee.engine.base import Finished, Handle, Request, TokenEvent
from cuvee.eval.verifiers import VERIFIERS, Answer, PromptCase, check_answer
from cuvee.licences import resolve_licence
from cuvee.store import Manifest, ModelStore, Source, utc_now, write_manifest
from helpers import run_cli

LOWER = {"id": "change_case:english_lowercase", "kwargs": {}}


class ScriptedEngine:
    """The Engine protocol answering from ``script``: (last user text, seed) -> (answer,
    finish reason); every request is kept, so tests can see what was asked."""

    name = "scripted"
    context_length = 4096

    def __init__(self, script: dict[tuple[str, int], tuple[str, str]]) -> None:
        self.script = script
        self.requests: list[Request] = []

    def submit(self, request: Request) -> Handle:
        request.validate()
        self.requests.append(request)
        prompt = request.messages[-1]["content"]
        text, reason = self.script[(prompt, request.params.seed)]
        handle = Handle()
        handle.emit(TokenEvent(text, 1))
        handle.emit(Finished(reason, 5, len(text.split())))
        return handle

    def close(self) -> None:
        pass


def store_model(name: str = "sft", licence: str = "Gemma") -> Path:
    """A fine-tune in the store whose GGUF export is on record, so nothing is converted."""
    settings = load_settings()
    directory = ModelStore(settings.models_dir).model_dir(name)
    directory.mkdir(parents=True)
    gguf = directory.parent.parent / "exports" / f"{name}-q8_0.gguf"
    gguf.parent.mkdir(parents=True, exist_ok=True)
    gguf.write_bytes(b"GGUF scripted")
    manifest = Manifest(
        name=name,
        kind="fine-tuned",
        architecture="gemma3",
        source=Source(type="training"),
        licence=resolve_licence(licence),
        chat_template="gemma",
        parent="tinybase",
        created_at=utc_now(),
        exports=[
            {
                "format": "gguf",
                "quantization": "q8_0",
                "adapter_only": False,
                "path": str(gguf),
                "size": gguf.stat().st_size,
                "sha256": "ab" * 32,
            }
        ],
        lineage={"base": {"name": "tinybase", "upstream": "example/tinybase"}},
    )
    write_manifest(directory, manifest)
    return directory


@pytest.fixture
def engine(monkeypatch) -> ScriptedEngine:
    import cuvee.engine

    scripted = ScriptedEngine({})
    monkeypatch.setattr(cuvee.engine, "open_engine", lambda *a, **k: scripted)
    store_model()
    return scripted


def write_jsonl(path: Path, rows: list[dict[str, Any]], licence: str | None = None) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    if licence:
        path.with_name(path.name + ".cuvee.yaml").write_text(
            f"licence: {licence}\nauthors: [Ana Lima]\nsource: our helpdesk\n", encoding="utf-8"
        )
    return path


def chat(user: str, answer: str, **extra: Any) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
        **extra,
    }


PROMPTS = [
    # a constraint decides: seeds 1 and 3 break "all lowercase"
    chat(
        "Say hello. Your entire response should be in lowercase letters.",
        "hello there.",
        metadata={"constraint": LOWER},
    ),
    # nothing decides: every answer stops and none shares a word with the reference
    chat("Name a colour.", "zebra"),
    # stopping decides: seed 2 runs out of tokens
    chat("Count to three.", "one two three"),
]
SCRIPT = {
    (PROMPTS[0]["messages"][0]["content"], 0): ("hello there.", "stop"),
    (PROMPTS[0]["messages"][0]["content"], 1): ("Hello There.", "stop"),
    (PROMPTS[0]["messages"][0]["content"], 2): ("hello there friend.", "stop"),
    (PROMPTS[0]["messages"][0]["content"], 3): ("HELLO THERE.", "stop"),
    (PROMPTS[1]["messages"][0]["content"], 0): ("red", "stop"),
    (PROMPTS[1]["messages"][0]["content"], 1): ("blue", "stop"),
    (PROMPTS[1]["messages"][0]["content"], 2): ("green", "stop"),
    (PROMPTS[1]["messages"][0]["content"], 3): ("Red", "stop"),
    (PROMPTS[2]["messages"][0]["content"], 0): ("one two three", "stop"),
    (PROMPTS[2]["messages"][0]["content"], 1): ("one two three", "stop"),
    (PROMPTS[2]["messages"][0]["content"], 2): ("one two three four five six", "length"),
    (PROMPTS[2]["messages"][0]["content"], 3): ("one two three", "stop"),
}


def test_pairs_are_kept_where_the_checks_disagree_and_read_back(
    engine, capsys, tmp_path: Path
) -> None:
    engine.script.update(SCRIPT)
    data = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS, licence="CC-BY-NC-4.0")
    out, kto = tmp_path / "pairs.jsonl", tmp_path / "kto.jsonl"
    code, stdout, err = run_cli(
        capsys,
        "data", "pairs", "--model", "sft", "--data", str(data), "-k", "4",
        "--max-tokens", "32", "-o", str(out), "--kto", str(kto), "--json",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(stdout)
    assert (summary["prompts"], summary["samples"], summary["pairs"]) == (3, 12, 2)
    assert summary["dropped"] == {"tie": 1, "too_few_answers": 0, "longer_chosen": 0}
    assert summary["checkers"]["constraints"] == {"prompts": 1, "decided": 1}
    assert summary["checkers"]["stops"] == {"prompts": 3, "decided": 1}
    assert summary["checkers"]["rouge_l"]["prompts"] == 3  # scored, whatever the scores
    assert "json" not in summary["checkers"] and "quote" not in summary["checkers"]
    assert summary["tokens"] == sum(len(text.split()) for text, _ in SCRIPT.values())

    # four seeded answers per prompt, all handed to the engine, at the settings asked
    assert len(engine.requests) == 12
    assert sorted(r.params.seed for r in engine.requests) == sorted([0, 1, 2, 3] * 3)
    assert {(r.params.temperature, r.params.max_tokens) for r in engine.requests} == {(0.8, 32)}

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    lower, count = rows
    # the first of the best (seed 0) over the first of the worst (seed 1)
    assert (lower["chosen"], lower["rejected"]) == ("hello there.", "Hello There.")
    assert lower["metadata"]["checker"][0] == "constraints"
    assert lower["metadata"]["scores"]["chosen"]["constraints"] == 1.0
    assert lower["metadata"]["scores"]["rejected"]["constraints"] == 0.0
    assert lower["metadata"]["model"] == "sft"
    assert lower["metadata"]["source"] == f"{data}:1"
    assert (count["chosen"], count["rejected"]) == ("one two three", "one two three four five six")
    assert count["metadata"]["checker"] == ["stops", "rouge_l"]  # the bigger gain first
    assert count["metadata"]["source"] == f"{data}:3"
    assert count["messages"] == [{"role": "user", "content": "Count to three."}]

    read = read_preferences(out)
    assert not read.problems and read.formats == ["openai-pairs"] and len(read.pairs) == 2
    assert read.licence.id == "CC-BY-NC-4.0"
    code, stdout, err = run_cli(capsys, "data", "check", str(out), "--json")
    assert code == 0, err
    assert json.loads(stdout)["pairs"] == 2

    # every distinct answer once for KTO, desirable when it passed all its checks
    labels = {
        (json.loads(line)["metadata"]["source"], json.loads(line)["messages"][-1]["content"]):
        json.loads(line)["label"]
        for line in kto.read_text().splitlines()
    }  # fmt: skip
    assert labels[(f"{data}:1", "hello there.")] is True
    assert labels[(f"{data}:1", "Hello There.")] is False
    assert labels[(f"{data}:3", "one two three four five six")] is False
    # an answer repeated with the same label is one example, case and spacing aside
    # ("HELLO THERE." after "Hello There.", "Red" after "red"); labelled apart, both stay
    assert (f"{data}:1", "HELLO THERE.") not in labels and (f"{data}:2", "Red") not in labels
    assert len(labels) == 3 + 3 + 2
    code, stdout, err = run_cli(capsys, "data", "check", str(kto), "--json")
    assert code == 0 and json.loads(stdout)["warnings"] == [], err
    unpaired = read_preferences(kto)
    assert not unpaired.problems and unpaired.formats == ["kto-messages"]
    assert summary["kto"] == {
        "desirable": sum(r.label for r in unpaired.unpaired),
        "undesirable": sum(not r.label for r in unpaired.unpaired),
    }


def test_the_licence_travels_and_the_model_is_recorded(engine, capsys, tmp_path: Path) -> None:
    engine.script.update(SCRIPT)
    data = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS, licence="CC-BY-NC-4.0")
    out = tmp_path / "pairs.jsonl"
    code, _, err = run_cli(
        capsys, "data", "pairs", "--model", "sft", "--data", str(data), "-o", str(out)
    )
    assert code == 0, err
    declaration = read_preferences(out).declaration
    assert declaration.licence.id == "CC-BY-NC-4.0" and declaration.authors == ("Ana Lima",)
    assert "our helpdesk" in declaration.source
    assert declaration.model["name"] == "sft" and declaration.model["licence"] == "Gemma"
    assert declaration.model["parent"] == "tinybase"
    assert declaration.model["upstream"] == "example/tinybase"
    code, stdout, err = run_cli(capsys, "data", "check", str(out), "--json")
    assert code == 0, err
    assert json.loads(stdout)["licence"]["commercial_use"] is False


def test_margin_decides_what_a_tie_is(engine, capsys, tmp_path: Path) -> None:
    engine.script.update(SCRIPT)
    data = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    out = tmp_path / "pairs.jsonl"
    args = ["data", "pairs", "--model", "sft", "--data", str(data), "-o", str(out), "--json"]
    # "hello there friend." against "hello there." differs in ROUGE-L only (0.8 vs 1.0)
    code, stdout, _ = run_cli(capsys, *args, "--check", "rouge_l", "--margin", "0.1")
    assert code == 0
    first = json.loads(out.read_text().splitlines()[0])
    assert first["metadata"]["checker"] == ["rouge_l"]
    assert set(first["metadata"]["scores"]["chosen"]) == {"rouge_l"}
    code, stdout, err = run_cli(capsys, *args, "--check", "rouge_l", "--margin", "1.5")
    assert json.loads(stdout)["pairs"] == 0 and json.loads(stdout)["dropped"]["tie"] == 3
    assert "no pair kept" in err and "--margin" in err
    assert out.read_text() == ""


def test_heldout_records_are_not_prompts(engine, capsys, tmp_path: Path) -> None:
    engine.script.update(SCRIPT)
    rows = [PROMPTS[0], {**PROMPTS[2], "split": "heldout"}]
    data = write_jsonl(tmp_path / "prompts.jsonl", rows)
    out = tmp_path / "pairs.jsonl"
    code, stdout, err = run_cli(
        capsys, "data", "pairs", "--model", "sft", "--data", str(data), "-o", str(out), "--json"
    )
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["prompts"] == 1 and summary["skipped_records"] == {"heldout": 1}
    assert len(engine.requests) == 4


def test_with_reference_the_datas_own_answer_is_a_candidate(engine, capsys, tmp_path: Path) -> None:
    engine.script.update(SCRIPT)
    bye = "Say bye. Your entire response should be in lowercase letters."
    # the data's own answer breaks the constraint that the model's answer keeps
    engine.script[(bye, 1)] = ("bye now.", "stop")
    # the data's answer is much longer than the model's
    engine.script[("Describe the sky.", 1)] = ("grey", "stop")
    sky = chat("Describe the sky.", "a wide bright blue dome with a few white clouds in it")
    rows = [*PROMPTS, chat(bye, "BYE NOW.", metadata={"constraint": LOWER}), sky]
    data = write_jsonl(tmp_path / "prompts.jsonl", rows, licence="MIT")
    out, kto = tmp_path / "pairs.jsonl", tmp_path / "kto.jsonl"
    code, stdout, err = run_cli(
        capsys,
        "data", "pairs", "--model", "sft", "--data", str(data), "-k", "1", "--seed", "1",
        "--with-reference", "-o", str(out), "--kto", str(kto), "--json",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(stdout)
    # one sample a prompt (seed 1), the reference beside it, never sent to the engine
    assert sorted(r.params.seed for r in engine.requests) == [1] * 5
    assert summary["samples"] == 5
    assert summary["reference_answers"] == {"candidates": 5, "chosen": 3, "rejected": 1}
    assert summary["dropped"]["too_few_answers"] == 1  # "one two three" twice is one answer
    by_source = {json.loads(x)["metadata"]["source"]: json.loads(x) for x in out.open()}
    lower, colour, bye_pair = by_source[f"{data}:1"], by_source[f"{data}:2"], by_source[f"{data}:4"]
    assert (lower["chosen"], lower["rejected"]) == ("hello there.", "Hello There.")
    assert lower["metadata"]["seeds"] == {"chosen": "reference", "rejected": 1}
    assert lower["metadata"]["checker"][0] == "constraints"
    assert (colour["chosen"], colour["rejected"]) == ("zebra", "blue")
    assert colour["metadata"]["checker"] == ["rouge_l"]  # the reference matches itself
    # the checks decide, not where an answer came from
    assert (bye_pair["chosen"], bye_pair["rejected"]) == ("bye now.", "BYE NOW.")
    assert bye_pair["metadata"]["seeds"] == {"chosen": 1, "rejected": "reference"}
    assert f"{data}:3" not in by_source
    assert read_preferences(out).formats == ["openai-pairs"]
    # the data's answers are KTO examples too, not credited to the model
    own = [json.loads(x)["metadata"] for x in kto.open() if '"seed": "reference"' in x]
    assert len(own) == 5 and all(m["model"] is None for m in own)
    code, stdout, err = run_cli(
        capsys, "data", "pairs", "--model", "sft", "--data", str(data), "-k", "1",
        "--seed", "1", "--with-reference", "-o", str(out),
    )  # fmt: skip
    assert code == 0, err
    assert "5 of the data's answers scored, 3 chosen and 1 rejected in a pair" in stdout
    # a pair the length check drops is not counted as the reference's
    code, stdout, err = run_cli(
        capsys, "data", "pairs", "--model", "sft", "--data", str(data), "-k", "1",
        "--seed", "1", "--with-reference", "--max-length-ratio", "0.01", "-o", str(out), "--json",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(stdout)
    assert (summary["pairs"], summary["dropped"]["longer_chosen"]) == (3, 1)
    assert summary["reference_answers"] == {"candidates": 5, "chosen": 2, "rejected": 1}
    kept = [json.loads(x)["metadata"]["seeds"]["chosen"] for x in out.open()]
    assert kept.count("reference") == 2


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--model", "nosuch"], "nosuch"),
        (["--model", "sft", "-k", "0", "--with-reference"], "-k"),
        (["--from-augment", "--with-reference"], "--with-reference needs --model"),
        (["--model", "sft", "-k", "1"], "-k"),
        (["--model", "sft", "--temperature", "0"], "--temperature"),
        (["--model", "sft", "--margin", "0"], "--margin"),
        (["--model", "sft", "--from-augment"], "--from-augment"),
        (["--model", "sft", "--data-is-missing"], "missing.jsonl: no such file"),
        (["--model", "sft", "--data-is-bad"], "prompts.jsonl:2"),
        (["--model", "sft", "--data-has-unknown-constraint"], "prompts.jsonl:1: unknown"),
    ],
)
def test_bad_input_is_named_and_writes_nothing(
    engine, capsys, tmp_path: Path, args: list[str], says: str
) -> None:
    engine.script.update(SCRIPT)
    data = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS, licence="MIT")
    if "--data-is-missing" in args:
        args.remove("--data-is-missing")
        data = tmp_path / "missing.jsonl"
    if "--data-is-bad" in args:
        args.remove("--data-is-bad")
        data.write_text(json.dumps(PROMPTS[0]) + '\n{"messages": [{"role": "user"}]}\n')
    if "--data-has-unknown-constraint" in args:
        args.remove("--data-has-unknown-constraint")
        odd = {**PROMPTS[0], "metadata": {"constraint": {"id": "case:shouting", "kwargs": {}}}}
        write_jsonl(data, [odd, *PROMPTS[1:]])
    out, kto = tmp_path / "pairs.jsonl", tmp_path / "kto.jsonl"
    code, _, err = run_cli(
        capsys, "data", "pairs", *args, "--data", str(data), "-o", str(out), "--kto", str(kto)
    )
    assert code != 0
    assert says in err
    assert not out.exists() and not kto.exists()
    assert not out.with_name(out.name + ".cuvee.yaml").exists()
    assert engine.requests == []


# ----------------------------------------------------------------------- from augmentation


def test_augment_variants_become_pairs_only_where_the_original_fails(
    capsys, tmp_path: Path
) -> None:
    from cuvee.data.constraints import check_constraint

    source = write_jsonl(
        tmp_path / "train.jsonl",
        [
            chat("Greet the customer.", "Hello Maria, thanks for writing to us."),
            chat("Say yes.", "yes, of course."),  # already lowercase: its variant proves nothing
        ],
        licence="Apache-2.0",
    )
    aug = tmp_path / "aug.jsonl"
    code, _, err = run_cli(
        capsys, "data", "augment", str(source), "-o", str(aug),
        "--constraint", "change_case:english_lowercase",
    )  # fmt: skip
    assert code == 0, err
    variants = [json.loads(line) for line in aug.read_text().splitlines()][2:]
    assert len(variants) == 2  # both records got a lowercase variant

    out, kto = tmp_path / "pairs.jsonl", tmp_path / "kto.jsonl"
    code, stdout, err = run_cli(
        capsys, "data", "pairs", "--from-augment", "--data", str(aug),
        "-o", str(out), "--kto", str(kto), "--json",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["pairs"] == 1 and summary["dropped_augment"] == {"original_passes": 1}
    (pair,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert pair["chosen"] == "hello maria, thanks for writing to us."
    assert pair["rejected"] == "Hello Maria, thanks for writing to us."
    assert pair["messages"][0]["content"].startswith("Greet the customer.")
    assert pair["messages"][0]["content"] != "Greet the customer."  # the constrained one
    assert pair["metadata"]["checker"] == ["constraints"]
    assert pair["metadata"]["original"] == f"{aug}:1"
    assert not check_constraint(LOWER["id"], pair["rejected"], {})
    assert check_constraint(LOWER["id"], pair["chosen"], {})
    read = read_preferences(out)
    # the licence travelled from train.jsonl through augment's output to the pairs
    assert not read.problems and len(read.pairs) == 1 and read.licence.id == "Apache-2.0"
    assert read.declaration.authors == ("Ana Lima",)
    assert read.declaration.model is None
    assert [r.label for r in read_preferences(kto).unpaired] == [True, False]
    code, stdout, err = run_cli(
        capsys, "data", "pairs", "--from-augment", "--data", str(aug), "--limit", "1",
        "-o", str(tmp_path / "one.jsonl"), "--json",
    )  # fmt: skip
    assert code == 0, err
    assert (json.loads(stdout)["prompts"], json.loads(stdout)["pairs"]) == (1, 1)
    # the length check: 7 words against 7 passes at ratio 1 (7 <= 7 + 3), not at 0.5 (> 6.5)
    for ratio, pairs_kept in (("1", 1), ("0.5", 0)):
        code, stdout, err = run_cli(
            capsys, "data", "pairs", "--from-augment", "--data", str(aug),
            "--max-length-ratio", ratio, "-o", str(tmp_path / f"r{ratio}.jsonl"), "--json",
        )  # fmt: skip
        assert code == 0, err
        summary = json.loads(stdout)
        assert (summary["pairs"], summary["dropped"]["longer_chosen"]) == (
            pairs_kept,
            1 - pairs_kept,
        )
        assert len((tmp_path / f"r{ratio}.jsonl").read_text().splitlines()) == pairs_kept

    # variants alone: each original is found where `augmented_from` points
    alone = tmp_path / "variants.jsonl"
    alone.write_text("".join(json.dumps(v) + "\n" for v in variants))
    out2 = tmp_path / "pairs2.jsonl"
    code, stdout, err = run_cli(
        capsys, "data", "pairs", "--from-augment", "--data", str(alone), "-o", str(out2), "--json"
    )
    assert code == 0, err
    (again,) = [json.loads(line) for line in out2.read_text().splitlines()]
    assert (again["chosen"], again["rejected"]) == (pair["chosen"], pair["rejected"])
    assert again["metadata"]["original"] == f"{source}:1"


def test_only_verified_variants_make_pairs(capsys, tmp_path: Path) -> None:
    from cuvee.data.constraints import get_constraint

    sentence = get_constraint(LOWER["id"]).phrasings({})[0]
    rows = [
        chat("Greet Maria.", "hello maria."),  # lowercase already, though not the same words
        chat(f"Greet Maria. {sentence}", "hello maria, welcome.", metadata={"constraint": LOWER}),
        chat("Greet Tom.", "Hello Tom."),
        chat(f"Greet Tom. {sentence}", "hello tom.", metadata={"constraint": LOWER}),
        chat("Greet Ann.", "Hello Ann."),
        chat(f"Greet Ann. {sentence}", "Hello ann.", metadata={"constraint": LOWER}),  # fails
    ]
    data = write_jsonl(tmp_path / "aug.jsonl", rows)
    out = tmp_path / "pairs.jsonl"
    code, stdout, err = run_cli(
        capsys, "data", "pairs", "--from-augment", "--data", str(data), "-o", str(out), "--json"
    )
    assert code == 0, err
    assert json.loads(stdout)["dropped_augment"] == {"original_passes": 1, "rewritten_fails": 1}
    (pair,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert (pair["chosen"], pair["rejected"]) == ("hello tom.", "Hello Tom.")


def test_from_augment_needs_augmented_records(capsys, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "plain.jsonl", [chat("Hi.", "Hello.")])
    out = tmp_path / "pairs.jsonl"
    code, _, err = run_cli(
        capsys, "data", "pairs", "--from-augment", "--data", str(data), "-o", str(out)
    )
    assert code != 0 and "no augmented records" in err and not out.exists()


# ------------------------------------------------------------------------------ the checks


def _case(user: str, reference: str | None = None, **kw: Any) -> PromptCase:
    from cuvee.data.records import Conversation, Origin, Turn

    context = kw.pop("context", ())
    prompt = Conversation((Turn("user", user),), Origin("t.jsonl", 1), "openai", context=context)
    return PromptCase(prompt, "t.jsonl:1", reference, **kw)


QUOTED = "Returns are accepted within 30 days of delivery."
# For each check: a prompt it applies to, an answer that should score higher, and one lower.
CHECK_CASES = {
    "constraints": (
        _case("Answer in lowercase.", constraints=((LOWER["id"], {}),)),
        Answer("all fine here"),
        Answer("All Fine Here"),
    ),
    "json": (
        _case("Give the order as JSON.", '{"order": "A1", "qty": 2}'),
        Answer('```json\n{"order": "B7", "qty": 1}\n```'),
        Answer('{"order": "B7"}'),  # valid JSON, wrong keys: half
    ),
    "rouge_l": (
        _case("Summarise.", "the parcel arrived late and damaged"),
        Answer("the parcel arrived late"),
        Answer("a refund was issued"),
    ),
    "quote": (
        _case(
            "How long do I have?",
            f'30 days: "{QUOTED}"',
            context=(f"Our policy. {QUOTED} Sale items are final.",),
        ),
        Answer(f'Thirty days: "{QUOTED}"'),
        Answer('Thirty days: "Returns are always accepted within a month."'),  # not in context
    ),
    "stops": (_case("Hi."), Answer("Hello.", "stop"), Answer("Hello, and", "length")),
}


def test_every_check_has_a_case() -> None:
    assert set(CHECK_CASES) == set(VERIFIERS)


@pytest.mark.parametrize("name", list(CHECK_CASES))
def test_each_check_ranks_answers_in_its_range(name: str) -> None:
    case, better, worse = CHECK_CASES[name]
    verifier = VERIFIERS[name]
    assert verifier.applies(case)
    high, low = verifier.score(case, better), verifier.score(case, worse)
    assert 0.0 <= low < high <= 1.0
    assert high >= verifier.passes_at > low


def test_constraints_cuvee_cannot_write_are_checked_by_ifeval() -> None:
    from cuvee.data.constraints import CONSTRAINTS

    cid = "detectable_format:constrained_response"  # IFEval's, not one augment writes
    assert cid not in CONSTRAINTS
    case = _case("Is it safe? Answer with one of the options.", constraints=((cid, {}),))
    verifier = VERIFIERS["constraints"]
    assert verifier.score(case, Answer("My answer is yes.")) == 1.0
    assert verifier.score(case, Answer("Probably, yes.")) == 0.0


def test_checks_that_do_not_apply_are_left_out() -> None:
    bare = _case("Tell me a joke.")
    assert check_answer(bare, Answer("Why not."), list(VERIFIERS.values())) == {"stops": 1.0}
    json_case, _, wrong_keys = CHECK_CASES["json"]
    assert VERIFIERS["json"].score(json_case, wrong_keys) == 0.5
    assert VERIFIERS["json"].score(json_case, Answer("order A1, 2 items")) == 0.0
    # a stated JSON constraint is scored once, by `constraints`
    stated = _case("Answer in JSON.", constraints=(("detectable_format:json_format", {}),))
    assert not VERIFIERS["json"].applies(stated)
    # a context whose reference answer does not quote it asks for no quote
    no_quote = _case("Is it there?", "No, the passage does not say.", context=(QUOTED,))
    assert not VERIFIERS["quote"].applies(no_quote)
    # nor does one whose reference is JSON, whose strings are quoted too
    extracted = _case(
        "Extract the name as JSON.",
        '{"name": "Ana Lima of the Larkspur team"}',
        context=("Signed, Ana Lima of the Larkspur team.",),
    )
    assert not VERIFIERS["quote"].applies(extracted)


def test_length_balance_keeps_pairs_whose_chosen_answer_is_not_much_longer() -> None:
    from cuvee.eval.preference_pairs import PairsSummary, length_balanced

    def row(chosen: int, rejected: int) -> dict:
        return {"chosen": " ".join(["w"] * chosen), "rejected": " ".join(["w"] * rejected)}

    rows = [row(10, 10), row(15, 10), row(16, 10), row(3, 0), row(4, 0), row(2, 30)]
    summary = PairsSummary(pairs=len(rows))
    kept = length_balanced(rows, 1.2, summary)  # at most 1.2 x rejected + 3 words
    assert kept == [rows[0], rows[1], rows[3], rows[5]]
    assert (summary.pairs, summary.longer) == (4, 2)
    assert summary.to_json()["dropped"]["longer_chosen"] == 2
