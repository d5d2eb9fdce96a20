"""The step layout model (engine.layout): how llama.cpp cuts a batch into ubatches when each
sequence has its own KV stream, and the right-padding that makes fewer of them."""

from __future__ import annotations

from cuvee.engine.layout import UBATCH_OVERHEAD, Feed, cost, plan_padding, split_sizes


def test_a_ubatch_takes_equal_tokens_from_a_run_of_consecutive_ids() -> None:
    # one decoding sequence (1 token) beside two prompts: 1 from each, then the prompts' rest
    assert split_sizes([(0, 1), (1, 5), (2, 5)], 512) == [3, 8]
    # unequal prompts: the shortest sets each ubatch's depth
    assert split_sizes([(0, 2), (1, 5)], 512) == [4, 3]


def test_a_gap_in_the_ids_starts_another_ubatch() -> None:
    assert split_sizes([(0, 3), (2, 3)], 512) == [3, 3]
    assert split_sizes([(0, 3), (1, 3), (2, 3)], 512) == [9]


def test_a_ubatch_holds_at_most_n_ubatch_tokens() -> None:
    assert split_sizes([(0, 10)], 4) == [4, 4, 2]
    assert split_sizes([(0, 6), (1, 6)], 4) == [4, 4, 4]
    assert sum(split_sizes([(i, 7 + i) for i in range(16)], 64)) == sum(7 + i for i in range(16))


def test_padding_prompts_to_one_length_when_it_saves_ubatches() -> None:
    feeds = [Feed(0, 5, 100), Feed(1, 3, 100), Feed(2, 4, 100)]
    pads = plan_padding(feeds, 512, 512)
    assert pads == [0, 2, 1]
    padded = [(f.seq_id, f.n + p) for f, p in zip(feeds, pads, strict=True)]
    assert split_sizes(padded, 512) == [15]
    assert cost(padded, 512) < cost([(f.seq_id, f.n) for f in feeds], 512)


def test_no_padding_where_it_costs_more_than_it_saves() -> None:
    # one long prompt and a short one: padding the short one to 100 computes 98 tokens more
    # to save one ubatch
    assert plan_padding([Feed(0, 100, 1000), Feed(1, 2, 1000)], 512, 512) == [0, 0]
    assert UBATCH_OVERHEAD < 98


def test_padding_stays_within_each_feeds_limit_and_the_batch() -> None:
    # a decoding sequence (max_pad 0) is never padded; a prompt near its window pads less
    pads = plan_padding([Feed(0, 1, 0), Feed(1, 3, 1), Feed(2, 6, 100)], 512, 512)
    assert pads[0] == 0 and pads[1] <= 1
    # the batch holds 12 tokens: padding both prompts to 6 would need 13
    feeds = [Feed(0, 1, 0), Feed(1, 2, 10), Feed(2, 6, 10)]
    assert plan_padding(feeds, 512, 13) == [0, 4, 0]
    assert plan_padding(feeds, 512, 12) == [0, 0, 0]
    assert plan_padding([Feed(0, 4, 0), Feed(1, 2, 0)], 512, 512) == [0, 0]


def test_a_burst_of_prompts_is_padded_to_a_few_levels_when_one_level_costs_more() -> None:
    # sixteen prompts of 11 to 25 tokens, ids in the order of their lengths (as the engine
    # assigns them to a burst): one level either pads to 400 tokens or leaves several
    # ubatches; three levels make three ubatches of 299 tokens
    lengths = [11, 12, 14, 15, 15, 16, 16, 16, 16, 18, 19, 20, 20, 21, 24, 25]
    feeds = [Feed(i, n, 2048) for i, n in enumerate(lengths)]
    pads = plan_padding(feeds, 512, 512)
    padded = [(i, n + p) for i, (n, p) in enumerate(zip(lengths, pads, strict=True))]
    assert split_sizes(padded, 512) == [256, 28, 15]
    single_levels = [
        [(i, max(n, level)) for i, n in enumerate(lengths)] for level in sorted(set(lengths))
    ]
    assert cost(padded, 512) < min(cost(c, 512) for c in single_levels)
    # every pad is one of the levels' shortfall: each prompt ends at 16, 20 or 25 tokens
    assert {n for _, n in padded} == {16, 20, 25}
