"""The training order: deterministic from (seed, epoch), equal batches per rank, restartable mid-epoch."""

from __future__ import annotations

from trainer.data import EpochBatchSampler


def test_order_depends_only_on_seed_and_epoch():
    a, b = EpochBatchSampler(50, 4, seed=7), EpochBatchSampler(50, 4, seed=7)
    assert list(a) == list(b)
    a.epoch = 1
    assert list(a) != list(b)
    assert list(EpochBatchSampler(50, 4, seed=8)) != list(b)


def test_ranks_get_equal_disjoint_batches():
    ranks = [EpochBatchSampler(103, 4, seed=1, rank=r, world_size=3) for r in range(3)]
    batches = [list(s) for s in ranks]
    assert len({len(b) for b in batches}) == 1 and len(batches[0]) == 103 // 12
    seen = [i for b in batches for batch in b for i in batch]
    assert len(seen) == len(set(seen)) == 12 * (103 // 12)
    assert all(len(batch) == 4 for b in batches for batch in b)


def test_restart_at_a_step_continues_the_same_sequence():
    full = list(EpochBatchSampler(40, 4, seed=3))
    resumed = EpochBatchSampler(40, 4, seed=3)
    resumed.start_step = 6
    assert list(resumed) == full[6:]
    assert list(resumed) == full  # the next epoch pass starts from the beginning again
