import numpy as np
import pytest

from pipeline import feed, schedule


def test_lr_warms_up_linearly_then_decays():
    kw = dict(base_lr=0.1, world_size=4, warmup_epochs=2, total_epochs=10)
    assert schedule.lr_at(0, **kw) == pytest.approx(0.1)
    assert schedule.lr_at(1, **kw) == pytest.approx(0.25)
    assert schedule.lr_at(2, **kw) == pytest.approx(0.4)
    assert schedule.lr_at(6, **kw) == pytest.approx(0.2)
    assert schedule.lr_at(10, **kw) == pytest.approx(0.0)
    assert schedule.lr_at(2, 0.1, 4, 2, 10, scale=False) == pytest.approx(0.1)


def test_steps_per_epoch_is_shared_by_all_ranks():
    assert schedule.steps_per_epoch(1000, 32, 2) == 15
    assert schedule.steps_per_epoch(10, 32, 2) == 1


def _chunks(sizes):
    start = 0
    for n in sizes:
        x = np.arange(start, start + n)
        yield x, x.copy()
        start += n


@pytest.mark.parametrize("buffer", [0, 16, 1000])
def test_shuffled_batches_emit_every_row_once(buffer):
    out = list(feed.shuffled_batches(_chunks([7, 30, 3, 25]), 8, buffer, np.random.default_rng(1)))
    rows = np.concatenate([x for x, _ in out])
    assert sorted(rows.tolist()) == list(range(65))
    assert all(len(x) == 8 for x, _ in out[:-1]) and 0 < len(out[-1][0]) <= 8
    for x, y in out:
        np.testing.assert_array_equal(x, y)  # features and labels stay paired
    if buffer == 0:
        assert rows.tolist() == list(range(65))
    else:
        assert rows.tolist() != list(range(65))


def test_shuffle_is_reproducible_from_the_seed():
    a = [x.tolist() for x, _ in feed.shuffled_batches(_chunks([50, 50]), 10, 40, np.random.default_rng(3))]
    b = [x.tolist() for x, _ in feed.shuffled_batches(_chunks([50, 50]), 10, 40, np.random.default_rng(3))]
    assert a == b
