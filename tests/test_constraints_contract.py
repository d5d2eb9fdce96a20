"""The contract every constraint type keeps, checked the same way for each: the ids come from
the ``CONSTRAINTS`` registry, so a newly registered type is checked without being named here.

A type lives in the module of its IFEval group, is registered under an IFEval id, samples
JSON-able IFEval arguments deterministically for a seed, states them in every phrasing, turns a
response into one its check accepts, rejects obvious violations of that response, and never
accepts what IFEval's own checker rejects (its check is IFEval's or stricter, so a training
variant that passes here passes the eval). The behaviour of each type in detail is in
``test_constraints.py``."""

from __future__ import annotations

import functools
import inspect
import json
import random
import re
from pathlib import Path
from typing import Any

import pytest

import cuvee.data.constraints as constraints_package
from cuvee.data.constraints import CONSTRAINTS, augment_pair, get_constraint, register
from cuvee.eval.instructions import build_checker
from cuvee.ifeval_checkers import offline_checkers

IDS = list(CONSTRAINTS)
PACKAGE_DIR = Path(constraints_package.__file__).parent
SEEDS = range(4)

# (instruction, response) pairs of the shapes an instruction set has, chosen so that every type
# can sample arguments from at least one (a new type that cannot needs a pair added here).
CORPUS = [
    (
        "Explain how photosynthesis works.",
        "Photosynthesis is the process plants use to turn light into chemical energy. "
        "Chlorophyll in the leaves absorbs mostly red and blue light. That energy splits water "
        "molecules and releases oxygen as a by-product. The plant then uses carbon dioxide from "
        "the air to build glucose. Some of the glucose is burned for energy right away.",
    ),
    (
        "Write a short essay on remote work.",
        "Remote work has changed how many companies think about the office. Teams that once "
        "met every morning now coordinate through chat and short video calls.\n\n"
        "The benefits are real. People report more time with family and fewer interruptions "
        "during the working day.\n\n"
        "There are costs too. New hires can struggle to learn the unwritten rules of a team "
        "and spontaneous conversations are hard to replace.",
    ),
    (
        "Give me a simple recipe for pancakes.",
        "Here is a simple recipe for about 8 pancakes:\n\n"
        "1. Whisk the flour and the baking powder in a bowl.\n"
        "2. Beat two eggs with the milk and the melted butter.\n"
        "3. Pour the wet ingredients into the dry ones and stir.\n"
        "4. Cook ladlefuls of batter in a hot pan for two minutes per side.\n\n"
        "Serve warm with maple syrup or fresh berries.",
    ),
    ("What is the capital of Australia?", "The capital of Australia is Canberra."),
    (
        "Write a template letter giving notice to a landlord.",
        "Dear [Landlord's Name],\n\n"
        "I am writing to give notice that I will move out of [Address] on [Move-out Date]. "
        "Please let me know when you can inspect the flat so that the deposit can be "
        "returned.\n\n"
        "Yours sincerely,\n[Your Name]",
    ),
]


@functools.cache
def samples(cid: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(instruction, response, kwargs) for every corpus pair and seed the type accepts."""
    constraint = get_constraint(cid)
    found = []
    for instruction, response in CORPUS:
        for seed in SEEDS:
            rng = random.Random(seed)
            if constraint.needs_instruction:
                kwargs = constraint.sample_kwargs(response, rng, instruction=instruction)
            else:
                kwargs = constraint.sample_kwargs(response, rng)
            if kwargs is not None:
                found.append((instruction, response, kwargs))
    return found


def ifeval_follows(cid: str, kwargs: dict[str, Any], prompt: str, response: str) -> bool:
    """IFEval's checker on one response, built as the eval builds it; a checker that raises
    has not seen the instruction followed, as the eval counts it."""
    checker = build_checker(cid, kwargs, prompt, "contract")
    try:
        return bool(checker.check_following(response))
    except Exception:
        return False


def violations(response: str, kwargs: dict[str, Any]) -> list[str]:
    """Responses made from a satisfying one that obviously break some constraint on it:
    nothing at all, every letter's case flipped, the whole of it twice and thirty times (every
    count and bound doubled or passed), and the arguments' own words, commas, emphasis and
    markers added after it."""
    words = []
    for value in kwargs.values():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and len(item) < 40:
                words.append(item)
    noise = f"Extra, *notes* and [notes] *** {' '.join(words * 25)} MORE, WORDS HERE."
    return [
        "",
        response.swapcase(),
        f"{response}\n\n{response}",
        "\n\n".join([response] * 30),
        f"{response}\n\n{noise}",
    ]


# fmt: off
NUMBER_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen", "twenty",
)
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")
# fmt: on


def mentions_number(text: str, n: int) -> bool:
    """Whether n is in the text as a whole word: digits, spelled, "once"/"twice" or ordinal."""
    forms = {str(n), {1: "once", 2: "twice"}.get(n, str(n))}
    if 0 <= n < len(NUMBER_WORDS):
        forms.add(NUMBER_WORDS[n])
    if 1 <= n <= len(ORDINALS):
        forms.add(ORDINALS[n - 1])
    lowered = text.lower()
    return any(re.search(rf"(?<![\w.]){form}(?!\w)", lowered) for form in forms)


# --- where a type lives and how it is registered ----------------------------------------------


@pytest.mark.parametrize("cid", IDS)
def test_lives_in_the_module_of_its_ifeval_group(cid: str) -> None:
    group, _, name = cid.partition(":")
    cls = CONSTRAINTS[cid]
    assert group and name, f"{cid!r} is not an IFEval id of the form group:name"
    assert cls.__module__ == f"cuvee.data.constraints.{group}", cls.__module__
    assert Path(inspect.getfile(cls)) == PACKAGE_DIR / f"{group}.py"


@pytest.mark.parametrize("cid", IDS)
def test_is_registered_once_under_an_ifeval_id(cid: str) -> None:
    assert cid in offline_checkers(), f"{cid} is no IFEval instruction id"
    cls = CONSTRAINTS[cid]
    assert cls.id == cid
    assert type(get_constraint(cid)) is cls
    with pytest.raises(ValueError, match="registered twice"):
        register(cid)(type("Again", (cls,), {}))
    assert CONSTRAINTS[cid] is cls


@pytest.mark.parametrize("cid", IDS)
def test_asks_for_the_instruction_exactly_when_it_uses_it(cid: str) -> None:
    # augment_pair passes instruction= only to types with needs_instruction, so the flag and
    # the signature of sample_kwargs must agree or the call fails (or the hook goes unused).
    cls = CONSTRAINTS[cid]
    takes_it = "instruction" in inspect.signature(cls.sample_kwargs).parameters
    assert takes_it == cls.needs_instruction


# --- arguments ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cid", IDS)
def test_samples_arguments_from_some_response(cid: str) -> None:
    assert samples(cid), f"no response in CORPUS lets {cid} sample arguments; add one"


@pytest.mark.parametrize("cid", IDS)
def test_sampling_and_transform_are_deterministic_for_a_seed(cid: str) -> None:
    constraint = get_constraint(cid)
    for instruction, response in CORPUS:
        for seed in SEEDS:
            extra = {"instruction": instruction} if constraint.needs_instruction else {}
            first = constraint.sample_kwargs(response, random.Random(seed), **extra)
            again = constraint.sample_kwargs(response, random.Random(seed), **extra)
            assert first == again, (cid, seed)
            if first is not None:
                assert constraint.transform(response, first) == constraint.transform(
                    response, first
                )
            variants = augment_pair(instruction, response, random.Random(seed), ids=[cid])
            assert variants == augment_pair(instruction, response, random.Random(seed), ids=[cid])


@pytest.mark.parametrize("cid", IDS)
def test_arguments_are_ifeval_arguments_and_survive_json(cid: str) -> None:
    # They are stored in the augmented records' metadata (JSON) and scored by IFEval.
    for instruction, _, kwargs in samples(cid):
        assert json.loads(json.dumps(kwargs)) == kwargs
        checker = build_checker(cid, kwargs, instruction, "contract")
        assert set(kwargs) <= set(checker.get_instruction_args_keys()), kwargs


# --- the instruction text ----------------------------------------------------------------------


@pytest.mark.parametrize("cid", IDS)
def test_every_phrasing_states_the_arguments(cid: str) -> None:
    constraint = get_constraint(cid)
    for _, _, kwargs in samples(cid):
        phrasings = constraint.phrasings(kwargs)
        assert phrasings and phrasings[0] == constraint.describe(kwargs)
        for phrasing in phrasings:
            assert phrasing.strip() and len(phrasing.split()) >= 3, phrasing
            for key, value in kwargs.items():
                if key.endswith("relation") or key == "prompt_to_repeat":
                    # Worded freely ("under", "no fewer than"), or referred to as "the
                    # request"; test_constraints checks those phrasings one by one.
                    continue
                if isinstance(value, int):
                    # "fewer than n" may read "at most n - 1", and fewer than one "no word".
                    stated = mentions_number(phrasing, value) or mentions_number(
                        phrasing, value - 1
                    )
                    if value == 1 and not stated:
                        stated = re.search(r"\b(no|not|zero)\b", phrasing.lower()) is not None
                    assert stated, (cid, key, value, phrasing)
                else:
                    for item in value if isinstance(value, list) else [value]:
                        assert str(item) in phrasing, (cid, key, item, phrasing)


def test_no_phrasing_is_shared_by_two_types() -> None:
    # The text must say which constraint is meant: one type's wording never stands for another.
    owner: dict[str, str] = {}
    for cid in IDS:
        for _, _, kwargs in samples(cid):
            for phrasing in get_constraint(cid).phrasings(kwargs):
                assert owner.setdefault(phrasing, cid) == cid, (phrasing, owner[phrasing], cid)


# --- checks -------------------------------------------------------------------------------------


@pytest.mark.parametrize("cid", IDS)
def test_the_transformed_response_passes_and_its_violations_fail(cid: str) -> None:
    constraint = get_constraint(cid)
    for _, response, kwargs in samples(cid):
        satisfying = constraint.transform(response, kwargs)
        assert satisfying.strip() and constraint.check(satisfying, kwargs), (kwargs, satisfying)
        rejected = [v for v in violations(satisfying, kwargs) if not constraint.check(v, kwargs)]
        assert rejected, (cid, kwargs, "no obvious violation is rejected")


@pytest.mark.parametrize("cid", IDS)
def test_check_accepts_nothing_ifeval_rejects(cid: str) -> None:
    # IFEval-or-stricter, checked on the satisfying response and its violations alike; the
    # "English" of change_case:english_* is the one documented leniency (langdetect is not
    # run), so every text here is English. IFEval must also reject one of the violations, so
    # the implication is not satisfied by both checks accepting everything.
    constraint = get_constraint(cid)
    for instruction, response, kwargs in samples(cid):
        satisfying = constraint.transform(response, kwargs)
        assert ifeval_follows(cid, kwargs, instruction, satisfying), (kwargs, satisfying)
        ifeval_rejected = 0
        for text in violations(satisfying, kwargs):
            follows = ifeval_follows(cid, kwargs, instruction, text)
            ifeval_rejected += not follows
            if constraint.check(text, kwargs):
                assert follows, (cid, kwargs, text[:200])
        assert ifeval_rejected, (cid, kwargs, "IFEval rejects none of the violations")
