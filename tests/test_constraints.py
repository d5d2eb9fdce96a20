import json
import random
import re
from pathlib import Path

import pytest

from cuvee.data.constraints import (
    CONSTRAINTS,
    augment_pair,
    check_constraint,
    count_words,
    get_constraint,
)
from cuvee.eval.instructions import build_checker

PROSE = (
    "Photosynthesis is the process plants use to turn light into chemical energy. "
    "Chlorophyll in the leaves absorbs mostly red and blue light. That energy splits water "
    "molecules and releases oxygen as a by-product. The plant then uses carbon dioxide from the "
    "air to build glucose. Some of the glucose is burned for energy right away. The rest is "
    "stored as starch or used to build cellulose for new cell walls."
)
RECIPE = (
    "Here is a simple recipe for about 8 pancakes:\n\n"
    "1. Whisk 200 g of flour, 2 tsp of baking powder and a pinch of salt in a bowl.\n"
    "2. In another bowl, beat 2 eggs with 300 ml of milk and 2 tbsp of melted butter.\n"
    "3. Pour the wet ingredients into the dry ones and stir until just combined.\n"
    "4. Cook ladlefuls of batter in a hot, lightly oiled pan for about 2 minutes per side.\n\n"
    "Serve warm with maple syrup or fresh berries."
)
EIFFEL = (
    "The Eiffel Tower, completed in 1889, stands about 330 metres tall in Paris, France. It was "
    "designed by Gustave Eiffel's engineering company for the World's Fair, and critics at the "
    "time called it an eyesore. Today, it welcomes roughly 7,000,000 visitors a year, making it "
    "one of the most visited monuments on Earth. At night, 20,000 light bulbs make it sparkle "
    "for five minutes every hour."
)
ESSAY = (
    "Remote work has changed how many companies think about the office. Teams that once met "
    "every morning now coordinate through chat, shared documents and short video calls. For "
    "many employees, the daily commute has simply disappeared.\n\n"
    "The benefits are real. People report more time with family, fewer interruptions and the "
    "freedom to live far from expensive city centres. Employers can hire from a much wider pool "
    "of talent and often spend less on office space.\n\n"
    "There are costs too. New hires can struggle to learn the unwritten rules of a team, and "
    "spontaneous conversations in the corridor are hard to replace. The most successful "
    "companies seem to mix both models, keeping offices for collaboration while letting "
    "focused work happen at home."
)
EXERCISE = (
    "## Benefits of exercise\n\n"
    "Regular exercise helps in many ways:\n\n"
    "- It strengthens the heart and lowers blood pressure.\n"
    "- It improves mood by releasing endorphins.\n"
    "- It helps you sleep more deeply.\n"
    "- It builds muscle and protects bone density as you age."
)
DOCTOR = (
    'Dr. Patel said the rash is mild. She told Mr. Jones to "apply the cream twice a day" and '
    "to avoid hot showers. If it is not better in 2 weeks, he should come back, e.g. for a "
    'blood test. She also said: "Don\'t scratch it!"'
)
LETTER = (
    "Hi Sam,\n\n"
    "Thanks for getting in touch. Your order #4512 shipped on Tuesday and should arrive within "
    "3 working days. You can track it with the link in your confirmation email.\n\n"
    "Best regards,\nThe Support Team"
)
CODE = "```python\ndef add(a, b):\n    return a + b\n```\n\nCall it as add(2, 3), which returns 5."
TEMPLATE = (
    "Dear [Landlord's Name],\n\n"
    "I am writing to give notice that I will move out of [Address] on [Move-out Date]. Please "
    "let me know when you can inspect the flat so that the deposit of [Deposit Amount] can be "
    "returned.\n\n"
    "Yours sincerely,\n[Your Name]"
)

PAIRS = [
    ("Explain how photosynthesis works.", PROSE),
    ("Give me a simple recipe for pancakes.", RECIPE),
    ("What is the capital of Australia?", "The capital of Australia is Canberra."),
    ("Tell me some facts about the Eiffel Tower.", EIFFEL),
    ("Write a short essay on remote work.", ESSAY),
    ("What are the benefits of regular exercise?", EXERCISE),
    ("Summarise the doctor's advice.", DOCTOR),
    ("Reply to Sam, who asked where order 4512 is.", LETTER),
    ("What is 12 times 12?", "144"),
    ("Write a Python function that adds two numbers.", CODE),
    ("Write a template letter giving notice to a landlord.", TEMPLATE),
]
SEEDS = range(6)


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text)


def variants_for(response: str, constraint_id: str) -> list[tuple[str, dict]]:
    out = []
    for seed in SEEDS:
        for _, new_response, cid, kwargs in augment_pair("Q?", response, random.Random(seed)):
            if cid == constraint_id:
                out.append((new_response, kwargs))
    return out


@pytest.mark.parametrize("instruction,response", PAIRS)
def test_every_variant_passes_its_own_check(instruction: str, response: str) -> None:
    for seed in SEEDS:
        variants = augment_pair(instruction, response, random.Random(seed))
        assert len({cid for _, _, cid, _ in variants}) == len(variants)
        for new_instruction, new_response, cid, kwargs in variants:
            assert check_constraint(cid, new_response, kwargs), (cid, kwargs, new_response)
            phrasings = get_constraint(cid).phrasings(kwargs)
            assert new_instruction in [f"{instruction} {p}" for p in phrasings]


def test_every_constraint_is_exercised_by_the_pairs() -> None:
    seen = {
        cid
        for instruction, response in PAIRS
        for seed in SEEDS
        for _, _, cid, _ in augment_pair(instruction, response, random.Random(seed))
    }
    assert seen == set(CONSTRAINTS)


def test_transforms_keep_realistic_pairs_rather_than_dropping_them() -> None:
    # Defensive dropping in augment_pair must not be what keeps the first test green.
    for instruction, response in PAIRS:
        for seed in SEEDS:
            rng = random.Random(seed)
            for cid, cls in CONSTRAINTS.items():
                constraint = cls()
                if constraint.needs_instruction:
                    kwargs = constraint.sample_kwargs(response, rng, instruction=instruction)
                else:
                    kwargs = constraint.sample_kwargs(response, rng)
                if kwargs is not None:
                    new_response = constraint.transform(response, kwargs)
                    assert constraint.check(new_response, kwargs), (cid, kwargs, new_response)


def test_augment_is_deterministic_per_seed() -> None:
    for instruction, response in PAIRS:
        first = augment_pair(instruction, response, random.Random(7))
        assert first == augment_pair(instruction, response, random.Random(7))


def test_two_sentence_answers_can_be_split_into_paragraphs_sections_and_bullets() -> None:
    # Most instruction-set answers are two or three sentences; they must still teach structure.
    short = "The sun is a star at the centre of our solar system. It is mostly hydrogen and helium."
    for cid, key in (
        ("length_constraints:number_paragraphs", "num_paragraphs"),
        ("detectable_format:multiple_sections", "num_sections"),
        ("detectable_format:number_bullet_lists", "num_bullets"),
    ):
        constraint = get_constraint(cid)
        kwargs = constraint.sample_kwargs(short, random.Random(0))
        assert kwargs is not None and kwargs[key] == 2, cid
        new_response = constraint.transform(short, kwargs)
        assert constraint.check(new_response, kwargs) and new_response != short
    # one sentence is still one paragraph: nothing to divide
    one = "The sun is a star at the centre of our solar system."
    assert (
        get_constraint("length_constraints:number_paragraphs").sample_kwargs(one, random.Random(0))
        is None
    )


def test_augment_records_balances_the_constraint_types() -> None:
    from collections import Counter

    from cuvee.data.augment import augment_records
    from cuvee.data.starter import load_starter

    records = load_starter("train")
    made = Counter(
        v.metadata["constraint"]["id"] for v in augment_records(records, per_record=1, seed=3)
    )
    # types that need several sentences (paragraphs, sections) are not crowded out by those
    # that any answer allows (lowercase): every type the set allows is made about equally often
    assert {"length_constraints:number_paragraphs", "detectable_format:multiple_sections"} <= set(
        made
    )
    assert max(made.values()) - min(made.values()) <= 1, made


def test_multiline_instruction_gets_constraint_as_its_own_paragraph() -> None:
    instruction = "Summarise this text:\n\nThe cat sat on the mat."
    variants = augment_pair(
        instruction, "A cat sat down.", random.Random(0), ids=["startend:quotation"]
    )
    # Which phrasing is appended depends on the rng; each is its own paragraph.
    phrasings = get_constraint("startend:quotation").phrasings({})
    assert variants[0][0] in [f"{instruction}\n\n{p}" for p in phrasings]


def test_ids_restrict_variants_and_code_is_left_alone() -> None:
    ids = ["change_case:english_lowercase", "punctuation:no_comma", "startend:quotation"]
    variants = augment_pair("Write code.", CODE, random.Random(0), ids=ids)
    # Lowercasing or dropping commas would change the code's meaning; quoting does not.
    assert [cid for _, _, cid, _ in variants] == ["startend:quotation"]


def test_case_changes_keep_words() -> None:
    for _, response in PAIRS:
        for new_response, _ in variants_for(response, "change_case:english_lowercase"):
            assert words(new_response) == [w.lower() for w in words(response)]
        for new_response, _ in variants_for(response, "change_case:english_capital"):
            assert words(new_response) == [w.upper() for w in words(response)]


def test_bullets_from_prose_keep_every_sentence() -> None:
    found = variants_for(PROSE, "detectable_format:number_bullet_lists")
    assert found
    for new_response, kwargs in found:
        lines = new_response.splitlines()
        assert len(lines) == kwargs["num_bullets"]
        assert all(line.startswith("* ") for line in lines)
        assert words(new_response) == words(PROSE)


def test_bullets_from_numbered_list_keep_intro_and_items() -> None:
    constraint = get_constraint("detectable_format:number_bullet_lists")
    assert constraint.sample_kwargs(RECIPE, random.Random(0)) == {"num_bullets": 4}
    new_response = constraint.transform(RECIPE, {"num_bullets": 4})
    assert new_response.splitlines()[0] == "Here is a simple recipe for about 8 pancakes:"
    assert "* In another bowl, beat 2 eggs with 300 ml of milk and 2 tbsp of melted butter." in (
        new_response.splitlines()
    )
    assert new_response.endswith("Serve warm with maple syrup or fresh berries.")


def test_letters_are_not_turned_into_bullets() -> None:
    rng = random.Random(0)
    assert (
        get_constraint("detectable_format:number_bullet_lists").sample_kwargs(LETTER, rng) is None
    )


def test_json_wraps_the_answer() -> None:
    for _, response in PAIRS:
        for new_response, _ in variants_for(response, "detectable_format:json_format"):
            assert json.loads(new_response) == {"answer": response.strip()}


def test_appending_constraints_keep_the_response_as_prefix() -> None:
    for _, response in PAIRS:
        for cid in ("startend:end_checker", "detectable_content:postscript"):
            for new_response, _ in variants_for(response, cid):
                assert new_response.startswith(response.rstrip())
                assert len(new_response) > len(response.rstrip())


def test_quotation_wraps_the_response() -> None:
    for _, response in PAIRS:
        for new_response, _ in variants_for(response, "startend:quotation"):
            assert new_response == f'"{response.strip()}"'


def test_title_from_opening_words_or_heading() -> None:
    constraint = get_constraint("detectable_format:title")
    assert (
        constraint.transform(PROSE, {})
        == "<<Photosynthesis is the Process Plants Use>>\n\n" + PROSE
    )
    assert constraint.transform(EXERCISE, {}).startswith(
        "<<Benefits of exercise>>\n\nRegular exercise helps in many ways:"
    )
    assert "## Benefits" not in constraint.transform(EXERCISE, {})
    assert constraint.transform(EIFFEL, {}).startswith("<<The Eiffel Tower>>\n\nThe Eiffel")
    # Too short for a title to add anything.
    assert constraint.sample_kwargs("144", random.Random(0)) is None


def test_no_comma_deletes_commas_and_thousands_separators() -> None:
    constraint = get_constraint("punctuation:no_comma")
    text = "In 2023, the city of Paris, France, welcomed 47,000,000 visitors.\nRegards,\nAnn"
    assert constraint.transform(text, {}) == (
        "In 2023 the city of Paris France welcomed 47000000 visitors.\nRegards\nAnn"
    )
    # A comma inside data cannot just be deleted, so such responses are skipped.
    assert constraint.sample_kwargs("The point is (3,4).", random.Random(0)) is None


def test_number_words_truncates_at_sentence_boundary() -> None:
    constraint = get_constraint("length_constraints:number_words")
    total = count_words(ESSAY)
    assert total > 100
    kwargs = {"relation": "less than", "num_words": 100}
    shorter = constraint.transform(ESSAY, kwargs)
    assert count_words(shorter) < 100
    assert ESSAY.startswith(shorter)
    assert shorter.endswith(".")
    # The cut is at the last sentence that fits, not earlier.
    next_end = ESSAY.index(".", len(shorter)) + 1
    assert count_words(ESSAY[:next_end]) >= 100
    # Nothing to do when the response already fits, and "at least" never edits.
    assert constraint.transform(ESSAY, {"relation": "less than", "num_words": 500}) == ESSAY
    assert constraint.transform(ESSAY, {"relation": "at least", "num_words": 50}) == ESSAY


def test_number_words_variants_keep_most_content() -> None:
    found = variants_for(ESSAY, "length_constraints:number_words")
    assert {kwargs["relation"] for _, kwargs in found} == {"less than", "at least"}
    truncated = [r for r, kwargs in found if r != ESSAY]
    assert truncated, "the long essay should be truncated for some seed"
    for new_response in truncated:
        assert ESSAY.startswith(new_response)
        assert count_words(new_response) >= 0.6 * count_words(ESSAY)


def test_paragraphs_and_sections_keep_words() -> None:
    for _, response in PAIRS:
        for new_response, kwargs in variants_for(response, "length_constraints:number_paragraphs"):
            assert words(new_response) == words(response)
            assert new_response.count("***") == kwargs["num_paragraphs"] - 1
        for new_response, kwargs in variants_for(response, "detectable_format:multiple_sections"):
            header = re.compile(rf"^{kwargs['section_spliter']} \d+$", re.MULTILINE)
            assert words(header.sub("", new_response)) == words(response)


def test_essay_paragraphs_follow_the_original_paragraphs() -> None:
    constraint = get_constraint("length_constraints:number_paragraphs")
    kwargs = constraint.sample_kwargs(ESSAY, random.Random(0))
    assert kwargs == {"num_paragraphs": 3}
    assert constraint.transform(ESSAY, kwargs) == ESSAY.replace("\n\n", "\n\n***\n\n")


# (id, kwargs, a response that passes, responses that fail)
CASES = [
    (
        "change_case:english_lowercase",
        {},
        "all lowercase here, 42 times.",
        ["Not lowercase.", "42"],
    ),
    ("change_case:english_capital", {}, "ALL CAPS, 42 TIMES.", ["ALL CAPS but one word.", "42"]),
    (
        "detectable_format:number_bullet_lists",
        {"num_bullets": 3},
        "Intro:\n* one\n  * two\n- three\n**Bold** is not a bullet.",
        ["* one\n* two", "* one\n* two\n* three\n* four", "1. one\n2. two\n3. three"],
    ),
    (
        "detectable_format:json_format",
        {},
        '```json\n{"answer": "hi"}\n```',
        ['{"answer": "hi"', "42", "plain text", '"just a string"'],
    ),
    (
        "startend:end_checker",
        {"end_phrase": "Any other questions?"},
        "Here you go.\n\nAny other questions?  \n",
        ["Any other questions? Thanks.", "here you go. any other questions?"],
    ),
    (
        "detectable_format:title",
        {},
        "<<My Title>>\nBody text.",
        ["<<   >>\nbody", "<<broken\n>> title", "No title here", "<My Title>"],
    ),
    ("punctuation:no_comma", {}, "No commas here; none at all.", ["One, two.", "1,000"]),
    (
        "length_constraints:number_words",
        {"relation": "less than", "num_words": 5},
        "one two three four",
        ["one two three four five", "Don't stop now, please."],
    ),
    (
        "length_constraints:number_words",
        {"relation": "at least", "num_words": 5},
        "Don't stop now, please.",
        ["one two three four", ""],
    ),
    ("startend:quotation", {}, '  "Quoted answer."\n', ['"Only opening quote.', "No quotes", '"']),
    (
        "detectable_content:postscript",
        {"postscript_marker": "P.S."},
        "Body.\n\n**P.S.** Remember the milk.",
        ["Body. P.S. inline mention", "Body.\n\nP.S.", "Body.\n\nP.P.S more", "Body."],
    ),
    (
        "detectable_content:postscript",
        {"postscript_marker": "P.P.S"},
        "Body.\n\nP.S. First.\nP.P.S Second.",
        ["Body.\n\nP.S. Also this."],
    ),
    (
        "length_constraints:number_paragraphs",
        {"num_paragraphs": 2},
        "First part.\n\n***\n\nSecond part.\n",
        ["First.\n***\n***\nSecond.", "Only one.", "a\n***\nb\n***\nc", "a\n\nb"],
    ),
    (
        "detectable_format:multiple_sections",
        {"section_spliter": "Section", "num_sections": 2},
        "Intro.\n## Section 1\nA\n\n**Section 2**\nB",
        [
            "Section 1\nA",
            "Section 1\nA\nSection 2\nB\nSection 3\nC",
            "See Section 1 and Section 2.",
            "SECTION 1\nA\nSECTION 2\nB",
        ],
    ),
    (
        "keywords:existence",
        {"keywords": ["glucose", "Oxygen"]},
        "OXYGEN and glucose are both involved.",
        # IFEval would accept "Glucoses" (it searches substrings); whole words are wanted here.
        ["Only glucose here.", "Glucoses and oxygen.", ""],
    ),
    (
        "keywords:forbidden_words",
        {"forbidden_words": ["advice", "doctor"]},
        "The doctors' advisory says rest.",
        ["Ask a Doctor.", "My ADVICE: rest.", "Take doctor-approved cream."],
    ),
    (
        "keywords:frequency",
        {"keyword": "art", "frequency": 2, "relation": "less than"},
        "Art is long.",
        # IFEval counts substrings, so "Start" holds an "art" too.
        ["Art and art.", "Start the art."],
    ),
    (
        "keywords:frequency",
        {"keyword": "art", "frequency": 2, "relation": "at least"},
        "ART, art and more.",
        ["Start the art.", "Art."],
    ),
    (
        "keywords:letter_frequency",
        {"letter": "z", "let_frequency": 3, "let_relation": "at least"},
        "Zany zebras buzz.",
        ["Lazy days.", "zz", ""],
    ),
    (
        "keywords:letter_frequency",
        {"letter": "e", "let_frequency": 2, "let_relation": "less than"},
        "A cat sat on a mat.",
        ["EvE", "Tree", "Hi there"],
    ),
    (
        "length_constraints:number_sentences",
        {"num_sentences": 3, "relation": "at least"},
        DOCTOR,
        ["Dr. Smith came. He left.", "One sentence only."],
    ),
    (
        "length_constraints:number_sentences",
        {"num_sentences": 2, "relation": "less than"},
        "Mr. Jones arrived at 5 p.m. on Monday.",
        ["It rained. We stayed in."],
    ),
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 3, "capital_relation": "at least"},
        # IFEval's tokens: "I", "DO" and "N'T" are all upper case.
        "I said DON'T.",
        ["x-RAY and 42 and U.s.", "NASA and I."],
    ),
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 1, "capital_relation": "less than"},
        "no capitals at all here.",
        ["A cat sat.", "i like NASA."],
    ),
    (
        "detectable_format:number_highlighted_sections",
        {"num_highlights": 2},
        "*One* and **two** here.",
        ["*One* only.", "* a bullet\n* another bullet", "** ** and * *", "*spans\nlines*"],
    ),
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "meanwhile"},
        'The shop opened.\n\n"Meanwhile, the street filled up.',
        [
            "The shop opened.\n\nMeanwhile it rained.\n\nThe end.",
            # IFEval's quirk: the empty piece lowers the count but still takes index 2.
            "The shop opened.\n\n\n\nMeanwhile it rained.",
            "The shop opened.\nMeanwhile it rained.",
            "The shop opened.\n\nMeanwhiles it rained.",
        ],
    ),
    (
        "combination:repeat_prompt",
        {"prompt_to_repeat": "Name two rivers in Europe."},
        "name two rivers in Europe.\n\nThe Danube and the Rhine.",
        [
            "Sure! Name two rivers in Europe.\n\nThe Danube.",
            "Name two rivers in Europe.",
            "Name two rivers.\n\nThe Danube.",
        ],
    ),
    (
        "detectable_content:number_placeholders",
        {"num_placeholders": 2},
        "Dear [name], see you on [date].",
        ["See [this link](https://x.org) and [1].", "- [x] done\n- [ ] todo", "Dear [name]."],
    ),
]


def test_every_constraint_has_hand_written_cases() -> None:
    assert {case[0] for case in CASES} == set(CONSTRAINTS)


@pytest.mark.parametrize("constraint_id,kwargs,passing,failing", CASES)
def test_checks_accept_and_reject(
    monkeypatch: pytest.MonkeyPatch,
    constraint_id: str,
    kwargs: dict,
    passing: str,
    failing: list[str],
) -> None:
    def no_transform(*args: object) -> str:
        raise AssertionError("check must not rely on transform")

    monkeypatch.setattr(CONSTRAINTS[constraint_id], "transform", no_transform)
    assert check_constraint(constraint_id, passing, kwargs)
    for response in failing:
        assert not check_constraint(constraint_id, response, kwargs), response


def test_lowercase_description_is_ifeval_wording() -> None:
    assert get_constraint("change_case:english_lowercase").describe({}) == (
        "Your entire response should be in English, and in all lowercase letters. "
        "No capital letters are allowed."
    )


def test_count_words_uses_word_tokens() -> None:
    # As IFEval's RegexpTokenizer(r"\w+"): "Don't" and "7,000" are two words each.
    assert count_words("Don't stop: 7,000 miles!") == 6


def test_unknown_id_raises_key_error_listing_known_ids() -> None:
    with pytest.raises(KeyError, match=r"unknown constraint id 'nope'.*punctuation:no_comma"):
        check_constraint("nope", "text", {})
    with pytest.raises(KeyError, match="known ids"):
        augment_pair("Q?", "Answer.", random.Random(0), ids=["startend:quotation", "nope"])


def test_number_words_rejects_unknown_relation() -> None:
    with pytest.raises(ValueError, match="relation"):
        check_constraint(
            "length_constraints:number_words", "a b", {"relation": "exactly", "num_words": 2}
        )


# --- the constraints added for IFEval's keyword, length, emphasis and prompt instructions ---

NEW_IDS = {
    "keywords:existence",
    "keywords:forbidden_words",
    "keywords:frequency",
    "keywords:letter_frequency",
    "length_constraints:number_sentences",
    "change_case:capital_word_frequency",
    "detectable_format:number_highlighted_sections",
    "length_constraints:nth_paragraph_first_word",
    "combination:repeat_prompt",
    "detectable_content:number_placeholders",
}
# More shapes of answer, each with a trap for one of the new constraints: markdown bold and
# bullets, acronyms and "I", runs of blank lines, inline code and a URL, a template, a poem.
ROUTER = (
    "**Step 1:** Unplug the router.\n\n**Step 2:** Wait 30 seconds, then plug it back in.\n\n"
    "* If the light is RED, call your ISP.\n* Otherwise, you're done!"
)
NASA = (
    "NASA (the U.S. space agency) runs missions like Apollo and Artemis. I think its budget is "
    "about $25 billion. It also funds research at universities.\n\n\n\n"
    "In short: NASA explores space."
)
RECURSION = (
    "Recursion is when a function calls itself. For example, `fact(n)` calls `fact(n - 1)`. "
    "See https://en.wikipedia.org/wiki/Recursion for more.\n\n"
    "Each call must move toward a base case; otherwise the program never stops."
)
MEETING = (
    "Subject: Meeting request\n\nHi [Name],\n\nCould we meet on [Date] at [Time] to discuss "
    "[Topic]? Let me know what works.\n\nThanks,\n[Your Name]"
)
HAIKU = "Soft rain on the roof\nwhispers to the sleeping town\npuddles hold the sky"
SCORER_PAIRS = [
    *PAIRS,
    ("How do I reset my router?", ROUTER),
    ("Describe what NASA does.", NASA),
    ("Explain recursion in programming.", RECURSION),
    ("Write an email template asking for a meeting.", MEETING),
    ("Write a haiku about rain.", HAIKU),
]


def eval_strict(constraint_id: str, kwargs: dict, prompt: str, response: str) -> bool:
    """The eval's strict verdict, built and applied as `InstructionsSuite.score` does."""
    checker = build_checker(constraint_id, kwargs, prompt, "test")
    return bool(response.strip()) and bool(checker.check_following(response))


@pytest.mark.parametrize("instruction,response", SCORER_PAIRS)
def test_new_variants_pass_the_eval_scorer(instruction: str, response: str) -> None:
    for seed in SEEDS:
        for new_instruction, new_response, cid, kwargs in augment_pair(
            instruction, response, random.Random(seed), ids=sorted(NEW_IDS)
        ):
            assert eval_strict(cid, kwargs, new_instruction, new_response), (cid, kwargs)
            assert check_constraint(cid, new_response, kwargs)


def test_scorer_pairs_exercise_every_new_id() -> None:
    seen = {
        cid
        for instruction, response in SCORER_PAIRS
        for seed in SEEDS
        for _, _, cid, _ in augment_pair(
            instruction, response, random.Random(seed), ids=sorted(NEW_IDS)
        )
    }
    assert seen == NEW_IDS


def test_repeat_prompt_receives_the_instruction_without_the_constraint_sentence() -> None:
    instruction = "Summarise this note:\n\nThe meeting moved to Friday at noon."
    [(new_instruction, new_response, cid, kwargs)] = augment_pair(
        instruction,
        "It is now on Friday at noon.",
        random.Random(0),
        ids=["combination:repeat_prompt"],
    )
    phrasings = get_constraint(cid).phrasings(kwargs)
    assert kwargs == {"prompt_to_repeat": instruction}
    assert new_instruction in [f"{instruction}\n\n{p}" for p in phrasings]
    assert new_response == f"{instruction}\n\nIt is now on Friday at noon."
    # Without an instruction there is nothing to repeat.
    constraint = get_constraint(cid)
    assert constraint.sample_kwargs("An answer.", random.Random(0)) is None
    assert constraint.sample_kwargs("An answer.", random.Random(0), instruction="  ") is None


def test_constraints_without_the_hook_get_no_instruction(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple] = []

    def two_arguments(self: object, response: str, rng: random.Random) -> dict:
        calls.append((response,))
        return {}

    monkeypatch.setattr(CONSTRAINTS["startend:quotation"], "sample_kwargs", two_arguments)
    variants = augment_pair("Q?", "Answer.", random.Random(0), ids=["startend:quotation"])
    assert calls == [("Answer.",)]
    assert [v[1] for v in variants] == ['"Answer."']
    assert not CONSTRAINTS["startend:quotation"].needs_instruction


def test_forbidden_words_prefer_words_of_the_instruction() -> None:
    constraint = get_constraint("keywords:forbidden_words")
    chosen = set()
    for seed in SEEDS:
        kwargs = constraint.sample_kwargs(
            DOCTOR, random.Random(seed), instruction="Summarise the doctor's advice."
        )
        assert kwargs is not None
        chosen.update(kwargs["forbidden_words"])
        assert kwargs["forbidden_words"] == sorted(set(kwargs["forbidden_words"]))
        assert constraint.check(DOCTOR, kwargs)
    assert {"doctor", "advice"} <= chosen
    assert "summarise" not in chosen  # a request verb, not a word of the topic


def test_keywords_are_content_words_the_response_uses() -> None:
    constraint = get_constraint("keywords:existence")
    for seed in SEEDS:
        kwargs = constraint.sample_kwargs(PROSE, random.Random(seed))
        assert kwargs is not None and 1 <= len(kwargs["keywords"]) <= 3
        for word in kwargs["keywords"]:
            assert len(word) >= 4 and word.lower() in {w.lower() for w in words(PROSE)}
            assert word.lower() not in {"that", "then", "from", "some", "with"}
    assert constraint.sample_kwargs("144", random.Random(0)) is None


def test_keyword_frequency_skips_words_inside_longer_words() -> None:
    response = "A star is born. The starry sky has one bright star tonight."
    constraint = get_constraint("keywords:frequency")
    for seed in range(20):
        kwargs = constraint.sample_kwargs(response, random.Random(seed))
        assert kwargs is not None
        # "star" is 2 words but 3 substrings, so whichever way it is counted would disagree.
        assert kwargs["keyword"] != "star"
        assert constraint.check(response, kwargs)


def test_number_sentences_keeps_a_margin_of_one() -> None:
    constraint = get_constraint("length_constraints:number_sentences")
    relations = set()
    for seed in range(20):
        kwargs = constraint.sample_kwargs(ESSAY, random.Random(seed))
        assert kwargs is not None
        relations.add(kwargs["relation"])
        if kwargs["relation"] == "at least":
            assert 2 <= kwargs["num_sentences"] <= 9 - 1  # ESSAY has 9 sentences
        else:
            assert kwargs["num_sentences"] >= 9 + 2
    assert relations == {"at least", "less than"}
    assert constraint.sample_kwargs(CODE, random.Random(0)) is None


def test_capital_words_emphasise_the_most_frequent_words() -> None:
    constraint = get_constraint("change_case:capital_word_frequency")
    kwargs = {"capital_relation": "at least", "capital_frequency": 2}
    # "energy" is used three times, "glucose" and "light" twice: the longer word wins the tie.
    # Only the first occurrence of each is capitalised.
    assert constraint.transform(PROSE, kwargs) == PROSE.replace(
        "chemical energy", "chemical ENERGY"
    ).replace("build glucose", "build GLUCOSE")
    assert constraint.transform(PROSE, {**kwargs, "capital_relation": "less than"}) == PROSE
    # Code, JSON keys and quoted text are case-sensitive: only "less than" is offered there.
    data = '{"station": "Fellgate", "wind": "gusting northerly"}'
    for response in (CODE, data):
        for seed in SEEDS:
            kwargs = constraint.sample_kwargs(response, random.Random(seed))
            assert kwargs is not None and kwargs["capital_relation"] == "less than"


def test_highlights_wrap_opening_clauses_and_keep_the_markdown() -> None:
    constraint = get_constraint("detectable_format:number_highlighted_sections")
    expected = ESSAY
    for phrase in (
        "Teams that once met every morning now coordinate through chat",
        "People report more time with family",
        "New hires can struggle to learn the unwritten rules of a team",
    ):
        expected = expected.replace(phrase, f"*{phrase}*")
    # One opening clause from each third of the response; the text is otherwise unchanged.
    assert constraint.transform(ESSAY, {"num_highlights": 3}) == expected
    lines = constraint.transform(EXERCISE, {"num_highlights": 2}).splitlines()
    assert "- *It strengthens the heart and lowers blood pressure*." in lines
    assert "- *It helps you sleep more deeply*." in lines
    assert lines[0] == "## Benefits of exercise"
    for response, _ in variants_for(RECURSION, "detectable_format:number_highlighted_sections"):
        assert "*See" not in response and "`*" not in response
    # Existing asterisks (bullets, bold) would be miscounted by IFEval's pattern.
    assert constraint.sample_kwargs(ROUTER, random.Random(0)) is None


def test_nth_paragraph_uses_the_responses_paragraphs() -> None:
    constraint = get_constraint("length_constraints:nth_paragraph_first_word")
    kwargs = constraint.sample_kwargs(NASA, random.Random(0))
    assert kwargs is not None and kwargs["num_paragraphs"] == 2
    assert kwargs["first_word"] in {"nasa", "in"}
    # The run of blank lines becomes one, which is what IFEval's split on "\n\n" needs.
    assert constraint.transform(NASA, kwargs) == NASA.replace("\n\n\n\n", "\n\n")
    # A single paragraph of sentences is divided between sentences.
    divided = constraint.transform(
        PROSE, {"num_paragraphs": 3, "nth_paragraph": 2, "first_word": "that"}
    )
    assert divided.split("\n\n")[1].startswith("That energy splits water")
    assert words(divided) == words(PROSE)
    # "Dr." is read by IFEval as "dr"; such a paragraph is never the one to name.
    for seed in range(20):
        kwargs = constraint.sample_kwargs(DOCTOR, random.Random(seed))
        assert kwargs is None or kwargs["first_word"] != "dr"


def test_placeholders_only_for_templates() -> None:
    constraint = get_constraint("detectable_content:number_placeholders")
    assert constraint.sample_kwargs(LETTER, random.Random(0)) is None
    counts = {
        constraint.sample_kwargs(TEMPLATE, random.Random(seed))["num_placeholders"]
        for seed in range(20)
    }
    assert counts <= {3, 4, 5} and 5 in counts  # TEMPLATE has five placeholders
    assert constraint.transform(TEMPLATE, {"num_placeholders": 5}) == TEMPLATE


@pytest.mark.parametrize(
    "constraint_id,kwargs,passing", [case[:3] for case in CASES if case[0] in NEW_IDS]
)
def test_new_checks_imply_the_eval_verdict(constraint_id: str, kwargs: dict, passing: str) -> None:
    # The checks here equal IFEval's or are stricter, so what passes here passes the eval.
    assert eval_strict(constraint_id, kwargs, "Prompt.", passing)


# --- phrasings: several wordings of each rule, so a model learns the rule, not one sentence ---

FIXTURE = Path(__file__).parents[1] / "src/cuvee/eval/fixtures/instructions.jsonl"
AT_LEAST = ("at least", "no fewer than", "or more", "minimum")
LESS_THAN = ("less than", "fewer than", "under", "shorter than", "below")
# fmt: off
NUMBER_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen", "twenty",
)
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")
# fmt: on
WHOLE_WORDS = {*NUMBER_WORDS, "once", "twice", *AT_LEAST, *LESS_THAN}
# Edge cases the sampled kwargs may not reach.
EXTRA_KWARGS = [
    (
        "change_case:capital_word_frequency",
        {"capital_relation": "less than", "capital_frequency": 1},
    ),
    (
        "change_case:capital_word_frequency",
        {"capital_relation": "less than", "capital_frequency": 2},
    ),
    (
        "change_case:capital_word_frequency",
        {"capital_relation": "at least", "capital_frequency": 1},
    ),
    ("keywords:frequency", {"keyword": "river", "frequency": 1, "relation": "at least"}),
    ("keywords:letter_frequency", {"letter": "q", "let_frequency": 1, "let_relation": "at least"}),
    ("length_constraints:number_sentences", {"relation": "less than", "num_sentences": 2}),
    ("keywords:existence", {"keywords": ["river"]}),
    ("keywords:forbidden_words", {"forbidden_words": ["river", "lake", "sea"]}),
]


def fixture_records() -> list[dict]:
    return [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]


def sampled_kwargs() -> list[tuple[str, dict]]:
    """kwargs from the hand-written cases, from sampling on every pair, and a few edge cases."""
    found = [(cid, kwargs) for cid, kwargs, *_ in CASES] + EXTRA_KWARGS
    for instruction, response in SCORER_PAIRS:
        for seed in SEEDS:
            found += [
                (cid, kwargs)
                for _, _, cid, kwargs in augment_pair(instruction, response, random.Random(seed))
            ]
    return found


def number_forms(n: int) -> set[str]:
    forms = {str(n), {1: "once", 2: "twice"}.get(n, str(n))}
    return forms | ({NUMBER_WORDS[n]} if n < len(NUMBER_WORDS) else set())


def expected_mentions(cid: str, kwargs: dict) -> tuple[list[str], list[set[str]]]:
    """(strings every phrasing contains verbatim, sets of which each phrasing contains one,
    compared in lower case and numbers as whole words)."""
    relation = (
        kwargs.get("relation") or kwargs.get("let_relation") or kwargs.get("capital_relation")
    )
    bound = {"at least": set(AT_LEAST), "less than": set(LESS_THAN)}.get(relation, set())
    table: dict[str, tuple[list[str], list[set[str]]]] = {
        "change_case:english_lowercase": ([], [{"english"}, {"lower", "uppercase", "capital"}]),
        "change_case:english_capital": ([], [{"english"}, {"capital", "upper", "caps"}]),
        "detectable_format:json_format": (["JSON"], []),
        "detectable_format:title": (["<<", ">>"], [{"title"}]),
        "punctuation:no_comma": ([], [{"comma"}]),
        "startend:quotation": ([], [{"double quot"}]),
        "combination:repeat_prompt": ([], [{"request"}, {"word for word", "verbatim", "exact"}]),
    }
    if cid in table:
        return table[cid]
    if cid == "detectable_format:number_bullet_lists":
        return [], [number_forms(kwargs["num_bullets"]), {"bullet"}, {"*", "asterisk"}]
    if cid == "startend:end_checker":
        return [kwargs["end_phrase"]], []
    if cid == "detectable_content:postscript":
        return [kwargs["postscript_marker"]], []
    if cid == "length_constraints:number_words":
        return [], [number_forms(kwargs["num_words"]), {"word"}, bound]
    if cid == "length_constraints:number_paragraphs":
        return ["***"], [number_forms(kwargs["num_paragraphs"]), {"paragraph"}]
    if cid == "detectable_format:multiple_sections":
        return [kwargs["section_spliter"]], [number_forms(kwargs["num_sections"]), {"section"}]
    if cid == "keywords:existence":
        return [f'"{w}"' for w in kwargs["keywords"]], []
    if cid == "keywords:forbidden_words":
        return [f'"{w}"' for w in kwargs["forbidden_words"]], []
    if cid == "keywords:frequency":
        return [f'"{kwargs["keyword"]}"'], [number_forms(kwargs["frequency"]), bound]
    if cid == "keywords:letter_frequency":
        return [f'"{kwargs["letter"]}"'], [
            number_forms(kwargs["let_frequency"]),
            bound,
            {"case", "capital"},
        ]
    if cid == "length_constraints:number_sentences":
        return [], [number_forms(kwargs["num_sentences"]), {"sentence"}, bound]
    if cid == "change_case:capital_word_frequency":
        n = kwargs["capital_frequency"]
        if relation == "at least":
            return [], [number_forms(n), set(AT_LEAST)]
        if n == 1:  # "fewer than one" reads better as "none"
            return [], [{"any word", "no word", "zero", "a single word"}]
        # "fewer than n", or "at most n - 1"
        return [], [number_forms(n) | number_forms(n - 1), set(LESS_THAN) | {"at most", "no more"}]
    if cid == "detectable_format:number_highlighted_sections":
        return ["*"], [number_forms(kwargs["num_highlights"]), set(AT_LEAST)]
    if cid == "length_constraints:nth_paragraph_first_word":
        nth = kwargs["nth_paragraph"]
        return [f'"{kwargs["first_word"]}"'], [
            number_forms(kwargs["num_paragraphs"]),
            {str(nth), ORDINALS[nth - 1]},
            {"paragraph"},
        ]
    if cid == "detectable_content:number_placeholders":
        return ["[", "]"], [number_forms(kwargs["num_placeholders"]), {"placeholder", "field"}]
    raise AssertionError(f"no expectations for {cid}")


def mentions(text: str, alternative: str) -> bool:
    # Numbers and bounds as whole words, so "1" is not found in "10" nor "under" in "understand".
    if alternative.isdigit() or alternative in WHOLE_WORDS:
        return re.search(rf"(?<![\w.]){alternative}(?!\w)", text.lower()) is not None
    return alternative in text.lower()


def test_every_constraint_has_several_distinct_phrasings_led_by_describe() -> None:
    seen = set()
    for cid, kwargs in sampled_kwargs():
        seen.add(cid)
        constraint = get_constraint(cid)
        phrasings = constraint.phrasings(kwargs)
        assert len(phrasings) >= 4, cid
        assert len({" ".join(p.lower().split()) for p in phrasings}) == len(phrasings), cid
        assert all(p.strip() == p and p for p in phrasings), cid
        assert phrasings[0] == constraint.describe(kwargs)
    assert seen == set(CONSTRAINTS)


def test_every_phrasing_states_the_parameters() -> None:
    for cid, kwargs in sampled_kwargs():
        exact, loose = expected_mentions(cid, kwargs)
        for phrasing in get_constraint(cid).phrasings(kwargs):
            for literal in exact:
                assert literal in phrasing, (cid, kwargs, phrasing)
            for alternatives in loose:
                assert any(mentions(phrasing, a) for a in alternatives), (cid, kwargs, phrasing)


def test_relations_are_never_mixed_up() -> None:
    for cid, kwargs in sampled_kwargs():
        relation = kwargs.get("relation") or kwargs.get("let_relation")
        if relation is None:
            continue
        for phrasing in get_constraint(cid).phrasings(kwargs):
            lowered = phrasing.lower()
            if relation == "at least":
                assert "less than" not in lowered and "under" not in lowered, phrasing
                assert "fewer than" not in lowered.replace("no fewer than", ""), phrasing
            else:
                assert "at least" not in lowered and "or more" not in lowered, phrasing


def test_augment_picks_phrasings_with_the_seeded_rng() -> None:
    used: dict[str, set[int]] = {cid: set() for cid in CONSTRAINTS}
    for instruction, response in SCORER_PAIRS:
        for seed in range(12):
            variants = augment_pair(instruction, response, random.Random(seed))
            assert variants == augment_pair(instruction, response, random.Random(seed))
            for new_instruction, _, cid, kwargs in variants:
                phrasings = get_constraint(cid).phrasings(kwargs)
                [index] = [
                    i for i, p in enumerate(phrasings) if new_instruction == f"{instruction} {p}"
                ]
                used[cid].add(index)
    assert all(len(indices) >= 2 for indices in used.values()), used


def fixture_sentences() -> set[str]:
    sentences = set()
    for record in fixture_records():
        for piece in re.split(r"(?<=[.!?;])\s+|\n", record["prompt"]):
            piece = " ".join(piece.lower().split()).rstrip(".!?;:")
            if piece:
                sentences.add(piece)
    return sentences


def test_no_phrasing_reuses_an_eval_prompt_sentence() -> None:
    sentences = fixture_sentences()
    cases = sampled_kwargs()
    # The eval's own parameters too, where a coincidence would be most likely.
    for record in fixture_records():
        cases += [
            (cid, kwargs)
            for cid, kwargs in zip(record["instruction_id_list"], record["kwargs"], strict=True)
            if cid in CONSTRAINTS and cid != "combination:repeat_prompt"
        ]
    for cid, kwargs in cases:
        for phrasing in get_constraint(cid).phrasings(kwargs):
            text = " ".join(phrasing.lower().split())
            for sentence in sentences:
                assert sentence not in text, (cid, phrasing, sentence)
