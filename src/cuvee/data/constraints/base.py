"""The constraint interface and its registry: what a constraint type provides (phrasings,
parameters a response allows, a transform, a check), ``CONSTRAINTS`` (IFEval instruction id ->
type, filled by ``register``), and the functions over it: ``get_constraint``,
``check_constraint`` and ``augment_pair``, which makes the training variants of one pair."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

Kwargs = dict[str, Any]
Variant = tuple[str, str, str, Kwargs]

CONSTRAINTS: dict[str, type[Constraint]] = {}

_C = TypeVar("_C", bound="type[Constraint]")


def register(constraint_id: str) -> Callable[[_C], _C]:
    """Class decorator adding a constraint to CONSTRAINTS under an IFEval instruction id."""

    def decorate(cls: _C) -> _C:
        if constraint_id in CONSTRAINTS:
            raise ValueError(f"constraint id {constraint_id!r} is registered twice")
        cls.id = constraint_id
        CONSTRAINTS[constraint_id] = cls
        return cls

    return decorate


class Constraint(ABC):
    """One verifiable output constraint; stateless, all parameters travel in `kwargs`.

    `kwargs` keys are IFEval's, so (instruction_id, kwargs) pairs produced here can be scored by
    IFEval and IFEval prompts can be scored by `check`.
    """

    id: ClassVar[str] = ""
    # Constraints about the request itself (repeat it, avoid its words) set this, and then
    # `augment_pair` passes the original instruction to `sample_kwargs` as `instruction=`.
    # The others keep the two-argument call, so they need not know the hook exists.
    needs_instruction: ClassVar[bool] = False

    def describe(self, kwargs: Kwargs) -> str:
        """The sentence appended to an instruction to impose this constraint: the first of
        `phrasings`. A subclass defines `phrasings`, or only `describe` for a single wording."""
        if type(self).phrasings is Constraint.phrasings:
            raise NotImplementedError(
                f"{type(self).__name__} defines neither describe nor phrasings"
            )
        return self.phrasings(kwargs)[0]

    def phrasings(self, kwargs: Kwargs) -> list[str]:
        """Distinct wordings of exactly this requirement with these parameters, `describe`'s
        first. `augment_pair` picks one per variant so that training does not tie the rule to
        one fixed sentence."""
        return [self.describe(kwargs)]

    @abstractmethod
    def sample_kwargs(self, response: str, rng: random.Random) -> Kwargs | None:
        """Parameters that `transform` can satisfy for this response, or None if it cannot."""

    @abstractmethod
    def transform(self, response: str, kwargs: Kwargs) -> str:
        """Rewrite `response` to satisfy the constraint while keeping its content."""

    @abstractmethod
    def check(self, response: str, kwargs: Kwargs) -> bool:
        """Whether `response` satisfies the constraint (never relies on `transform`)."""


def get_constraint(constraint_id: str) -> Constraint:
    try:
        cls = CONSTRAINTS[constraint_id]
    except KeyError:
        known = " ".join(sorted(CONSTRAINTS))
        raise KeyError(f"unknown constraint id {constraint_id!r}; known ids: {known}") from None
    return cls()


def check_constraint(constraint_id: str, response: str, kwargs: Kwargs) -> bool:
    return get_constraint(constraint_id).check(response, kwargs)


def augment_pair(
    instruction: str,
    response: str,
    rng: random.Random,
    ids: Sequence[str] | None = None,
) -> list[Variant]:
    """One (new_instruction, new_response, constraint_id, kwargs) variant per applicable id.

    Ids are tried in the given order (default: registration order) so a seeded `rng` gives
    reproducible output, including which of the constraint's phrasings is appended.
    Constraints with `needs_instruction` also see `instruction` as it is here, without the
    constraint sentence.
    """
    # Resolve every id first so a typo fails loudly instead of silently producing fewer variants.
    constraints = [get_constraint(i) for i in (list(CONSTRAINTS) if ids is None else ids)]
    # A multi-line instruction (e.g. one that embeds a document) reads better with the
    # constraint as its own paragraph than glued to the end of its last line.
    joiner = "\n\n" if "\n" in instruction.strip() else " "
    variants: list[Variant] = []
    for constraint in constraints:
        if constraint.needs_instruction:
            kwargs = constraint.sample_kwargs(response, rng, instruction=instruction)
        else:
            kwargs = constraint.sample_kwargs(response, rng)
        if kwargs is None:
            continue
        new_response = constraint.transform(response, kwargs)
        # Defensive: a training example that violates its own instruction is worse than none.
        if not new_response.strip() or not constraint.check(new_response, kwargs):
            continue
        sentence = rng.choice(constraint.phrasings(kwargs))
        new_instruction = instruction.rstrip() + joiner + sentence
        variants.append((new_instruction, new_response, constraint.id, dict(kwargs)))
    return variants
