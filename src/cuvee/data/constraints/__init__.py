"""Verifiable IFEval-style output constraints, for augmenting training pairs and scoring outputs.

One module per IFEval instruction group, so a file name says where an instruction id lives
(``change_case:english_lowercase`` is in ``change_case.py``): ``change_case``, ``combination``,
``detectable_content``, ``detectable_format``, ``keywords``, ``length_constraints``,
``punctuation`` and ``startend``. ``base`` holds the interface, the registry and
``augment_pair``; ``text`` the text toolkit the groups share. Importing the package registers
every type."""

from __future__ import annotations

from cuvee.data.constraints import (  # noqa: F401  (imported so that their types register)
    change_case,
    combination,
    detectable_content,
    detectable_format,
    keywords,
    length_constraints,
    punctuation,
    startend,
)
from cuvee.data.constraints.base import (
    CONSTRAINTS,
    Constraint,
    augment_pair,
    check_constraint,
    get_constraint,
    register,
)
from cuvee.data.constraints.text import count_words

__all__ = [
    "CONSTRAINTS",
    "Constraint",
    "augment_pair",
    "check_constraint",
    "count_words",
    "get_constraint",
    "register",
]

# The order of CONSTRAINTS is the order augment_pair tries the types in, and augment_records
# shuffles from it, so it is part of their seeded output: a dataset built with --seed is rebuilt
# the same. It stays the order the types were registered in when they all lived in one module;
# a type added later comes after these, in the order its group module is imported above.
_ORDER = (
    "change_case:english_lowercase",
    "change_case:english_capital",
    "detectable_format:number_bullet_lists",
    "detectable_format:json_format",
    "startend:end_checker",
    "detectable_format:title",
    "punctuation:no_comma",
    "length_constraints:number_words",
    "startend:quotation",
    "detectable_content:postscript",
    "length_constraints:number_paragraphs",
    "detectable_format:multiple_sections",
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
)


def _put_in_order() -> None:
    registered = dict(CONSTRAINTS)
    CONSTRAINTS.clear()  # the same dict object: base and every importer see the new order
    for cid in _ORDER:
        CONSTRAINTS[cid] = registered.pop(cid)  # a KeyError here: an id above lost its type
    CONSTRAINTS.update(registered)


_put_in_order()
