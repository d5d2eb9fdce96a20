"""`cuvee data augment`: variants of instruction records whose instruction adds a verifiable
constraint (lowercase, N bullets, JSON, ...) and whose response is rewritten to satisfy it, so a
model learns to follow format instructions and the result can be checked later."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Iterator, Sequence

from cuvee.data.constraints import CONSTRAINTS, augment_pair, get_constraint
from cuvee.data.records import Conversation, Turn

# Records whose instruction already imposes a format; another constraint could contradict it.
SKIPPED_CATEGORIES = frozenset({"format_constrained"})


def augment_records(
    records: Sequence[Conversation],
    *,
    per_record: int = 1,
    ids: Sequence[str] | None = None,
    seed: int = 0,
) -> Iterator[Conversation]:
    """Yield up to ``per_record`` constrained variants of each chat record.

    The last user turn gets the constraint sentence; the last assistant turn is rewritten. Plain
    text records, records already carrying a constraint and records whose instruction already sets
    a format (category ``format_constrained``, where a second constraint could contradict the
    first) are skipped. Deterministic for a seed.

    Each record tries the constraint types that have the fewest variants so far first (ties in
    a seeded random order). Types that few responses allow (paragraphs, sections and bullets
    need several sentences) would otherwise be crowded out by those that almost any response
    allows (lowercase, keywords), and a model sees too few of them to learn them.
    """
    pool = list(CONSTRAINTS) if ids is None else list(ids)
    for cid in pool:
        get_constraint(cid)  # unknown ids fail before any work
    rng = random.Random(seed)
    made: Counter[str] = Counter()
    for record in records:
        if (
            record.is_text
            or len(record.turns) < 2
            or "constraint" in record.metadata
            or record.category in SKIPPED_CATEGORIES
        ):
            continue
        order = pool[:]
        rng.shuffle(order)
        order.sort(key=made.__getitem__)  # stable: fewest-made first, ties as shuffled
        user, assistant = record.turns[-2], record.turns[-1]
        variants = augment_pair(user.content, assistant.content, rng, order)[:per_record]
        for instruction, response, cid, kwargs in variants:
            made[cid] += 1
            turns = (*record.turns[:-2], Turn("user", instruction), Turn("assistant", response))
            yield dataclasses.replace(
                record,
                turns=turns,
                metadata={
                    **record.metadata,
                    "constraint": {"id": cid, "kwargs": kwargs},
                    "augmented_from": str(record.origin),
                },
            )
