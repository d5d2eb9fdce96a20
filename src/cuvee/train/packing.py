"""Packing: several short examples in one fixed-length row, isolated from each other.

Each example keeps its own position ids, restarting at 0, and the model's attention is limited to
the example a token belongs to: transformers builds a block-diagonal causal mask from restarting
position ids when no attention mask is given (tests check the logits of a packed example equal
those of the example alone). Padding at the end of a row is its own segment and never supervised.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass

from cuvee.train.encode import IGNORE, Example


@dataclass(frozen=True)
class Row:
    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    real_tokens: int

    @property
    def supervised(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


def assign_bins(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: indexes of examples grouped into bins of at most ``capacity``."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    # (free space, bin index), kept sorted so the tightest bin that fits is found by bisection.
    free: list[tuple[int, int]] = []
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"example {i} has {n} tokens, more than the row length {capacity}")
        k = bisect.bisect_left(free, (n, -1))
        if k == len(free):
            bins.append([i])
            bisect.insort(free, (capacity - n, len(bins) - 1))
        else:
            space, b = free.pop(k)
            bins[b].append(i)
            bisect.insort(free, (space - n, b))
    return bins


def pack(
    examples: list[Example], seq_len: int, pad_id: int, *, packing: bool = True, seed: int = 0
) -> list[Row]:
    """Rows of exactly ``seq_len`` tokens. Without packing, one example per row."""
    if packing:
        bins = assign_bins([len(e) for e in examples], seq_len)
    else:
        bins = [[i] for i in range(len(examples))]
    rng = random.Random(seed)
    rows: list[Row] = []
    for members in bins:
        # The order inside a row does not matter to the model; shuffle so it does not follow size.
        rng.shuffle(members)
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for i in members:
            ex = examples[i]
            ids += ex.input_ids
            labels += ex.labels
            positions += list(range(len(ex)))
        real = len(ids)
        pad = seq_len - real
        ids += [pad_id] * pad
        labels += [IGNORE] * pad
        positions += list(range(pad))
        rows.append(Row(ids, labels, positions, real))
    return rows
