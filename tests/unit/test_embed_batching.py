"""Length-sorted token-budget batch planning and padding (pure numpy, no model)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.embed.batching import pad_batch, plan_batches


def _check_plan(lengths, budget, max_batch, pad_multiple=1, max_width=None, overhead=64):
    batches = plan_batches(np.asarray(lengths), budget, max_batch, overhead_tokens=overhead,
                           pad_multiple=pad_multiple, max_width=max_width)
    seen = np.concatenate([b.indices for b in batches]) if batches else np.array([], dtype=np.int64)
    assert sorted(seen.tolist()) == list(range(len(lengths))), "every text in exactly one batch"
    for b in batches:
        size = len(b.indices)
        longest = max(int(np.max(np.asarray(lengths)[b.indices])), 1)
        assert 1 <= size <= max_batch
        assert b.width >= longest
        if size > 1:
            assert size * b.width <= budget, (size, b.width, budget)
        if pad_multiple > 1 and (max_width is None or b.width < max_width):
            assert b.width % pad_multiple == 0
        if max_width is not None:
            assert b.width <= max(max_width, longest)
    return batches


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("budget,max_batch", [(4096, 512), (300, 7), (64, 1000), (1, 4)])
def test_plan_respects_budget_and_covers_every_text(seed, budget, max_batch):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 400, size=int(rng.integers(1, 300)))
    _check_plan(lengths, budget, max_batch)


@pytest.mark.parametrize("order", ["ascending", "descending", "shuffled", "equal"])
def test_plan_any_input_order_gives_length_sorted_batches(order):
    lengths = np.arange(1, 201)
    if order == "descending":
        lengths = lengths[::-1].copy()
    elif order == "shuffled":
        lengths = np.random.default_rng(3).permutation(lengths)
    elif order == "equal":
        lengths = np.full(200, 50)
    batches = _check_plan(lengths, 1000, 64)
    # Sorted longest first: no batch holds a text longer than any text of an earlier batch.
    maxima = [int(lengths[b.indices].max()) for b in batches]
    minima = [int(lengths[b.indices].min()) for b in batches]
    assert maxima == sorted(maxima, reverse=True)
    assert all(minima[i] >= maxima[i + 1] for i in range(len(batches) - 1))


def test_short_texts_share_batches_long_ones_do_not():
    lengths = np.array([10] * 100 + [400] * 4)
    batches = _check_plan(lengths, 800, 512)
    assert sorted(len(b.indices) for b in batches if b.width == 400) == [2, 2]  # 800 // 400
    short = [len(b.indices) for b in batches if b.width == 10]
    assert sum(short) == 100 and len(short) == 2 and max(short) <= 80  # 800 // 10, no more batches than needed


def _cost(batches, overhead):
    return sum(overhead + len(b.indices) * b.width for b in batches)


def _brute_force_best(lengths, budget, max_batch, overhead):
    """Least cost over every contiguous split of the sorted lengths (exponential; tiny inputs only)."""
    sorted_lengths = sorted((max(x, 1) for x in lengths), reverse=True)
    n = len(sorted_lengths)
    best = float("inf")
    for mask in range(1 << (n - 1)):
        cuts = [0] + [i + 1 for i in range(n - 1) if mask >> i & 1] + [n]
        cost = 0
        for a, b in zip(cuts, cuts[1:]):
            size, width = b - a, sorted_lengths[a]
            if size > max_batch or (size > 1 and size * width > budget):
                cost = float("inf")
                break
            cost += overhead + size * width
        best = min(best, cost)
    return best


@pytest.mark.parametrize("seed", range(8))
def test_plan_is_optimal_on_small_inputs(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 60, size=int(rng.integers(1, 11))).tolist()
    budget, max_batch, overhead = int(rng.integers(40, 200)), int(rng.integers(1, 6)), int(rng.integers(0, 50))
    batches = _check_plan(lengths, budget, max_batch, overhead=overhead)
    assert _cost(batches, overhead) == _brute_force_best(lengths, budget, max_batch, overhead)


def test_plan_beats_filling_each_batch_to_the_budget():
    rng = np.random.default_rng(0)
    lengths = np.exp(rng.uniform(np.log(10), np.log(400), 1024)).astype(np.int64)
    budget, max_batch, overhead = 65536, 512, 4096
    batches = _check_plan(lengths, budget, max_batch, overhead=overhead)
    sorted_lengths = np.sort(lengths)[::-1]
    greedy_cost, start = 0, 0
    while start < len(sorted_lengths):  # the obvious plan: as many texts as the budget allows
        size = max(1, min(max_batch, budget // sorted_lengths[start], len(sorted_lengths) - start))
        greedy_cost += overhead + size * sorted_lengths[start]
        start += size
    assert _cost(batches, overhead) < 0.9 * greedy_cost
    padded = sum(len(b.indices) * b.width for b in batches)
    assert padded / lengths.sum() < 1.3  # greedy: 1.56


def test_overhead_trades_batches_for_padding():
    lengths = np.array([100, 90, 80, 70, 60, 50, 40, 30, 20, 10])
    few = _check_plan(lengths, 10_000, 100, overhead=10_000)
    many = _check_plan(lengths, 10_000, 100, overhead=0)
    assert len(few) == 1  # overhead dominates: one batch
    assert len(many) == len(lengths)  # padding is all that costs: no padding at all


def test_text_longer_than_budget_runs_alone():
    batches = _check_plan([1000, 5, 5], 256, 32)
    assert [len(b.indices) for b in batches] == [1, 2]
    assert batches[0].width == 1000


def test_pad_multiple_rounds_up_but_not_past_max_width():
    batches = _check_plan([13, 13, 3], 10_000, 8, pad_multiple=8, max_width=256)
    assert batches[0].width == 16
    batches = _check_plan([254, 250], 10_000, 8, pad_multiple=8, max_width=254)
    assert batches[0].width == 254


def test_empty_input_and_zero_length_texts():
    assert plan_batches(np.array([], dtype=np.int64), 100, 10, overhead_tokens=8) == []
    batches = _check_plan([0, 0, 0], 100, 10)
    assert batches[0].width == 1


def test_invalid_budget_rejected():
    with pytest.raises(ValueError):
        plan_batches(np.array([1]), 0, 10, overhead_tokens=8)
    with pytest.raises(ValueError):
        plan_batches(np.array([1]), 10, 10, overhead_tokens=-1)


def test_pad_batch_right_and_left():
    ids, mask = pad_batch([[5, 6, 7], [8], []], 4, 0)
    assert ids.tolist() == [[5, 6, 7, 0], [8, 0, 0, 0], [0, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    ids, mask = pad_batch([[5, 6, 7], [8]], 4, 9, left=True)
    assert ids.tolist() == [[9, 5, 6, 7], [9, 9, 9, 8]]
    assert mask.tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]
    assert ids.dtype == np.int64
    ids, mask = pad_batch([[1]], 2, 0, with_mask=False)
    assert mask is None
