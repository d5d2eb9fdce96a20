"""The eval suites without a model: IFEval's file format and metrics, offline sentence splitting,
the task metrics, pairwise judging in both orders, and clear errors for bad suite files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cuvee.eval.pairwise import SUITE as PAIRWISE
from cuvee.eval.pairwise import judge_items, parse_scores
from cuvee.eval.suites import EvalError, Item, get_suite, resolve_suite
from cuvee.eval.tasks import SUITE as TASKS
from cuvee.eval.tasks import lcs_length, macro_f1, parse_json_answer, predicted_label, rouge_l


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# Lines in the official IFEval input_data.jsonl format, written for this test. Line 2 has its
# kwargs as the Hugging Face copy writes them: every key, None where unused.
IFEVAL_LINES = [
    {
        "key": 11,
        "prompt": "Describe cats, in lowercase letters only.",
        "instruction_id_list": ["change_case:english_lowercase"],
        "kwargs": [{}],
    },
    {
        "key": 12,
        "prompt": "Write at least 2 sentences about rivers without commas.",
        "instruction_id_list": ["punctuation:no_comma", "length_constraints:number_sentences"],
        "kwargs": [
            {"num_sentences": None, "relation": None},
            {"num_sentences": 2, "relation": "at least", "num_words": None, "keyword": None},
        ],
    },
    {
        "key": 13,
        "prompt": "Say hello in lowercase.",
        "instruction_id_list": ["change_case:english_lowercase"],
        "kwargs": [{}],
    },
    {
        "key": 14,
        "prompt": "Name a city and mention paris.",
        "instruction_id_list": ["keywords:existence"],
        "kwargs": [{"keywords": ["paris"]}],
    },
    {
        "key": 15,
        "prompt": "Answer in fewer than 5 words.",
        "instruction_id_list": ["length_constraints:number_words"],
        "kwargs": [{"num_words": 5, "relation": "less than"}],
    },
]
IFEVAL_ANSWERS = [
    "cats sleep a lot and purr.",  # follows
    "Rivers run to the sea. They carve valleys! Fish live there?",  # both follow (3 sentences)
    "Sure!\nhello there",  # capital in the first line: fails strict, passes loose
    "I like London.",  # fails both
    "",  # an empty answer follows nothing, as in IFEval
]


@pytest.fixture
def no_nltk_data(monkeypatch):
    """Any use of NLTK's data files (punkt) fails the test: sentence splitting must be nupunkt."""
    import nltk

    def refuse(*args, **kwargs):
        raise AssertionError(f"NLTK data was looked up: {args}")

    monkeypatch.setattr(nltk.data, "load", refuse)
    monkeypatch.setattr(nltk.data, "find", refuse)


def test_official_ifeval_lines_are_read_and_scored_with_the_four_metrics(
    tmp_path, no_nltk_data
) -> None:
    path = _jsonl(tmp_path / "input_data.jsonl", IFEVAL_LINES)
    resolved = resolve_suite(str(path))  # detected from the keys
    assert resolved.suite.name == "instructions" and not resolved.packaged
    assert [i.id for i in resolved.items] == ["11", "12", "13", "14", "15"]
    score = resolved.suite.score(resolved.items, IFEVAL_ANSWERS)
    assert score.metrics == {
        "prompt_strict": 2 / 5,
        "prompt_loose": 3 / 5,
        "instruction_strict": 3 / 6,
        "instruction_loose": 4 / 6,
    }
    assert score.counts == {"prompts": 5, "instructions": 6, "checker_errors": 0}
    assert score.items[2]["strict"] == [False] and score.items[2]["loose"] == [True]


def test_sentence_and_capital_word_checks_run_on_nupunkt(tmp_path, no_nltk_data) -> None:
    lines = [
        {
            "key": 1,
            "prompt": "p",
            "instruction_id_list": ["length_constraints:number_sentences"],
            "kwargs": [{"num_sentences": 3, "relation": "less than"}],
        },
        {
            "key": 2,
            "prompt": "p",
            "instruction_id_list": ["change_case:capital_word_frequency"],
            "kwargs": [{"capital_frequency": 2, "capital_relation": "at least"}],
        },
    ]
    suite = get_suite("instructions")
    items = suite.load(_jsonl(tmp_path / "s.jsonl", lines))
    # "Dr." must not end a sentence: two sentences, fewer than 3
    two = "Dr. Smith arrived at noon. He left soon after."
    three = "One. Two. Three."
    assert suite.score(items[:1], [two]).metrics["prompt_strict"] == 1.0
    assert suite.score(items[:1], [three]).metrics["prompt_strict"] == 0.0
    assert suite.score(items[1:], ["It is VERY VERY loud. Yes."]).metrics["prompt_strict"] == 1.0
    assert suite.score(items[1:], ["It is VERY loud."]).metrics["prompt_strict"] == 0.0


def test_a_checker_that_fails_is_counted_not_skipped(tmp_path, monkeypatch) -> None:
    from cuvee.eval.instructions import offline_checkers

    cls = offline_checkers()["punctuation:no_comma"]

    def broken(self, value):
        raise RuntimeError("checker broke")

    monkeypatch.setattr(cls, "check_following", broken)
    items = get_suite("instructions").load(_jsonl(tmp_path / "a.jsonl", IFEVAL_LINES[:2]))
    score = get_suite("instructions").score(items, IFEVAL_ANSWERS[:2])
    assert score.counts["checker_errors"] == 1
    assert score.counts["instructions"] == 3  # the broken check still counts, as not followed
    assert score.metrics["instruction_strict"] == 2 / 3
    assert "checker broke" in score.items[1]["errors"][0]


def test_the_packaged_instruction_fixture_loads_and_every_id_is_known() -> None:
    resolved = resolve_suite("instructions")
    assert resolved.packaged and len(resolved.items) >= 30
    ids = {i for item in resolved.items for i in item.data["instruction_id_list"]}
    assert len(ids) >= 20  # a broad spread of IFEval's instruction kinds


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"instruction_id_list": ["no:such_check"], "kwargs": [{}]}, "unknown instruction id"),
        ({"instruction_id_list": ["punctuation:no_comma"], "kwargs": []}, "one object per"),
        (
            {"instruction_id_list": ["keywords:existence"], "kwargs": [{}]},
            "needs argument(s) keywords",
        ),
        (
            {
                "instruction_id_list": ["length_constraints:number_words"],
                "kwargs": [{"num_words": 5, "relation": "about"}],
            },
            "bad arguments",
        ),
        ({"instruction_id_list": []}, "empty"),
    ],
)
def test_a_bad_instruction_line_names_file_and_line(tmp_path, record, message) -> None:
    path = _jsonl(tmp_path / "bad.jsonl", [IFEVAL_LINES[0], {"key": 9, "prompt": "p", **record}])
    with pytest.raises(EvalError) as info:
        resolve_suite(str(path))
    assert f"{path}:2" in info.value.message and message in info.value.message


def test_bad_files_unknown_suites_and_repeated_ids_are_clear_errors(tmp_path) -> None:
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(IFEVAL_LINES[0]) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(EvalError, match=r"broken\.jsonl:2: not valid JSON"):
        resolve_suite(str(broken))
    with pytest.raises(EvalError, match="unknown suite 'instruction'") as info:
        resolve_suite("instruction")
    assert "instructions" in (info.value.hint or "")
    with pytest.raises(EvalError, match="no such suite file"):
        resolve_suite(str(tmp_path / "missing.jsonl"))
    odd = _jsonl(tmp_path / "odd.jsonl", [{"question": "?"}])
    with pytest.raises(EvalError, match=r"odd\.jsonl:1: no suite reads records with keys question"):
        resolve_suite(str(odd))
    twice = _jsonl(tmp_path / "twice.jsonl", [IFEVAL_LINES[0], IFEVAL_LINES[0]])
    with pytest.raises(EvalError, match=r"twice\.jsonl:2: item id '11' repeats"):
        resolve_suite(str(twice))
    task = _jsonl(tmp_path / "t.jsonl", [{"task": "classify", "prompt": "p", "labels": ["a"]}])
    with pytest.raises(EvalError, match=r"t\.jsonl:1: missing field 'label'"):
        resolve_suite(f"tasks={task}")


def test_rouge_l_is_the_lcs_f1() -> None:
    assert lcs_length(["a", "b", "c", "d", "e"], ["a", "x", "c", "y", "e"]) == 3
    assert lcs_length([], ["a"]) == 0
    # LCS 3 ("the cat sat"), precision 3/3, recall 3/4
    assert rouge_l("The cat sat.", "the cat sat down") == pytest.approx(2 * 1 * 0.75 / 1.75)
    assert rouge_l("dogs bark", "the cat sat") == 0.0
    assert rouge_l("same words here", "same words here") == 1.0


def test_classification_extraction_and_qa_metrics() -> None:
    labels = ["billing", "technical", "account"]
    assert predicted_label("Billing.", labels) == "billing"
    assert predicted_label("This is a technical issue", labels) == "technical"
    assert predicted_label("billing or account", labels) is None  # two labels: no guess
    assert macro_f1(["a", "a", "b"], ["a", None, "a"]) == pytest.approx((0.5 + 0.0) / 2)
    assert macro_f1(["a", "b"], ["a", "b"]) == 1.0
    assert parse_json_answer('```json\n{"a": 1}\n```') == {"a": 1}
    with pytest.raises(ValueError):
        parse_json_answer('Here you go: {"a": 1}')

    def item(i, task, **data):
        return Item(id=str(i), prompt="p", data={"task": task, **data})

    items = [
        item(1, "classify", labels=labels, label="billing"),
        item(2, "classify", labels=labels, label="account"),
        item(3, "extract", fields={"name": "Ana Lima", "people": 4}),
        item(4, "extract", fields={"name": "Bo", "people": 2}),
        item(5, "closed_qa", answers=["Vienna"]),
        item(6, "closed_qa", answers=["ten"]),
        item(7, "summarise", reference="the cat sat down"),
    ]
    outputs = [
        "billing",
        "technical",
        '{"name": "ana  lima", "people": "4"}',
        "name: Bo",
        "Vienna.",
        "It was about ten years.",
        "The cat sat.",
    ]
    score = TASKS.score(items, outputs)
    assert score.metrics["class_accuracy"] == 0.5
    # billing F1 1, account F1 0 (missed), technical F1 0 (a false positive)
    assert score.metrics["class_macro_f1"] == pytest.approx(1 / 3)
    assert score.metrics["extract_valid_json"] == 0.5
    assert score.metrics["extract_field_accuracy"] == 2 / 4
    assert score.metrics["qa_exact"] == 0.5 and score.metrics["qa_contains"] == 1.0
    assert score.metrics["summary_rouge_l"] == pytest.approx(2 * 0.75 / 1.75)
    assert score.counts["fields"] == 4


def test_the_packaged_task_fixture_covers_every_task() -> None:
    resolved = resolve_suite("tasks")
    tasks = [i.data["task"] for i in resolved.items]
    assert {t: tasks.count(t) for t in set(tasks)} == {
        "summarise": 10,
        "classify": 10,
        "extract": 10,
        "closed_qa": 10,
    }
    assert len({i.data["task"] for i in resolved.items[:4]}) == 4  # --limit keeps a mix


def test_judge_scores_are_read_from_the_first_line() -> None:
    assert parse_scores("7 4\nAnswer 1 is better.") == (7.0, 4.0)
    assert parse_scores("\n**8, 6**") == (8.0, 6.0)
    assert parse_scores("Answer 1 gets 7") is None
    assert parse_scores("12 3") is None


def _bias_judge(prefer: str | None, calls: list):
    """A judge with a position bias: +1 to whichever answer it reads first; 9 for answers
    containing ``prefer``, else 3; "???" (unparseable) for answers containing 'garble'."""

    def judge(prompts: list[Item]) -> list[str]:
        calls.extend(prompts)
        replies = []
        for p in prompts:
            first = p.prompt.split("[Answer 1]\n")[1].split("\n[End of answer 1]")[0]
            second = p.prompt.split("[Answer 2]\n")[1].split("\n[End of answer 2]")[0]
            if "garble" in first + second:
                replies.append("???")
                continue
            s1 = (9 if prefer and prefer in first else 3) + 1
            s2 = 9 if prefer and prefer in second else 3
            replies.append(f"{s1} {s2}\nbecause")
        return replies

    return judge


def test_pairwise_judges_both_orders_so_position_bias_cancels() -> None:
    items = PAIRWISE.load(None)[:4]
    calls: list = []
    same = PAIRWISE.compare(items, ["x"] * 4, ["y"] * 4, _bias_judge(None, calls))
    assert len(calls) == 8  # two orders per prompt
    assert [c.id for c in calls[:2]] == [f"{items[0].id}/ab", f"{items[0].id}/ba"]
    # the judge always favours the first answer, yet every prompt is a tie
    assert same.metrics == {"win": 0.0, "tie": 1.0, "loss": 0.0, "relative_score": 1.0}
    a = ["good A", "good A", "plain", "garble"]
    b = ["plain", "plain", "good A", "plain"]
    mixed = PAIRWISE.compare(items, a, b, _bias_judge("good", []))
    assert mixed.counts == {
        "prompts": 4,
        "judged": 3,
        "wins": 2,
        "ties": 0,
        "losses": 1,
        "judge_errors": 2,
    }
    assert mixed.metrics["win"] == pytest.approx(2 / 3)
    # A: (10 + 9) twice and (4 + 3) once; B: (4 + 3) twice and (10 + 9) once
    assert mixed.metrics["relative_score"] == pytest.approx((19 * 2 + 7) / (7 * 2 + 19))
    assert mixed.items[3]["verdict"] == "unjudged"


def test_judge_prompts_carry_both_answers_in_each_order() -> None:
    items = [Item(id="q", prompt="Why?")]
    ab, ba = judge_items(items, ["alpha"], ["beta"])
    assert ab.prompt.index("alpha") < ab.prompt.index("beta")
    assert ba.prompt.index("beta") < ba.prompt.index("alpha")
    assert ab.system and "Why?" in ab.prompt


def test_suites_register_through_the_registry(monkeypatch) -> None:
    from cuvee.eval import suites as registry

    class Echo:
        name, version, description, max_tokens = "echo", "1", "test suite", 4

        def accepts(self, record):
            return "echo" in record

        def load(self, path):
            return [Item(id="1", prompt="say hi", where="x:1")]

        def score(self, items, outputs):
            from cuvee.eval.suites import Score

            return Score({"said_hi": float(outputs[0] == "hi")})

    monkeypatch.setitem(registry.SUITES, "echo", registry.register(Echo()))
    assert "echo" in registry.suite_names()
    assert isinstance(get_suite("echo"), registry.Suite)


def test_pairwise_reads_peoples_votes_beside_the_judges(tmp_path: Path) -> None:
    # the votes file the web UI's compare screen writes (POST /v1/votes)
    votes = tmp_path / "pairwise-votes.jsonl"
    rows = [
        {"id": "v1", "prompt": "Write a haiku.", "category": "vote",
         "vote": {"a": "tune", "b": "base", "winner": "a"}},
        # shown the other way round on screen: still a win for the tune
        {"id": "v2", "prompt": "Explain rain.", "category": "vote",
         "vote": {"a": "base", "b": "tune", "winner": "b"}},
        {"id": "v3", "prompt": "Name a colour.", "category": "vote",
         "vote": {"a": "tune", "b": "base", "winner": "tie"}},
        # a vote on other models counts for nothing here
        {"id": "v4", "prompt": "Say hi.", "category": "vote",
         "vote": {"a": "tune", "b": "other", "winner": "b"}},
    ]  # fmt: skip
    votes.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    items = PAIRWISE.load(votes)
    assert [i.data["vote"]["winner"] for i in items] == ["a", "b", "tie", "b"]
    # the judge prefers answers with "good": A wins v1 and v2, ties v3 and v4
    a = ["good", "good", "x", "x"]
    b = ["plain", "plain", "x", "x"]
    score = PAIRWISE.compare(items, a, b, _bias_judge("good", []), names=("tune", "base"))
    assert score.counts["human_votes"] == 3
    assert score.metrics["human_win"] == pytest.approx(2 / 3)
    assert score.metrics["human_tie"] == pytest.approx(1 / 3)
    assert score.metrics["human_loss"] == 0.0
    assert score.metrics["judge_agrees_with_human"] == 1.0
    # from the base's side the same votes are losses
    flipped = PAIRWISE.compare(items, b, a, _bias_judge("good", []), names=("base", "tune"))
    assert flipped.metrics["human_loss"] == pytest.approx(2 / 3)
    # without names (or votes) nothing is added
    plain = PAIRWISE.compare(items, a, b, _bias_judge("good", []))
    assert "human_votes" not in plain.counts


def test_a_malformed_vote_is_named_with_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "votes.jsonl"
    bad.write_text(json.dumps({"prompt": "Hi", "vote": {"a": "x", "b": "y"}}) + "\n")
    with pytest.raises(EvalError, match=r"votes.jsonl:1: 'vote' needs a 'winner'"):
        PAIRWISE.load(bad)
