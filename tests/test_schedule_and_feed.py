import numpy as np
import pytest

from pipeline.training import feed, schedule


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


@pytest.mark.parametrize("buffer", [0, 1000])
def test_multi_step_labels_stay_rows(buffer):
    """A forecast's label is a row of ``horizon`` values, in the last partial batch too."""
    chunks = ((x, np.stack([x, x + 1000], axis=1)) for x, _ in _chunks([7, 30]))
    out = list(feed.shuffled_batches(chunks, 8, buffer, np.random.default_rng(1)))
    for x, y in out:
        assert y.shape == (len(x), 2)
        np.testing.assert_array_equal(y[:, 1], x + 1000)


def test_shuffle_is_reproducible_from_the_seed():
    a = [x.tolist() for x, _ in feed.shuffled_batches(_chunks([50, 50]), 10, 40, np.random.default_rng(3))]
    b = [x.tolist() for x, _ in feed.shuffled_batches(_chunks([50, 50]), 10, 40, np.random.default_rng(3))]
    assert a == b


def test_arrow_reader_views_fixed_size_blobs_without_a_copy_and_decodes_like_petastorm(tmp_path):
    """The pyarrow reader hands the image blobs over as an (N, H*W*C) uint8 view of the Arrow
    buffer; decoded, they equal the bytes-per-row path (Petastorm's, where it is installed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.ingest.images import ImageLayout, images_to_tensor_layout

    layout = ImageLayout(3, 2, 3)
    rng = np.random.default_rng(0)
    blobs = [rng.integers(0, 256, 18, dtype=np.uint8).tobytes() for _ in range(50)]
    pq.write_table(pa.table({"image": pa.array(blobs, pa.binary()), "label": pa.array(range(50), pa.int32())}),
                   tmp_path / "part-00000.parquet", row_group_size=20)
    url = tmp_path.as_uri()
    got = list(feed.shard_batches(url, 0, 1, fields=["image", "label"], reader="arrow", seed=None, shuffle=False))
    assert [len(b.label) for b in got] == [20, 20, 10]
    assert all(b.image.dtype == np.uint8 and b.image.shape == (len(b.label), 18) for b in got)
    x = np.concatenate([images_to_tensor_layout(b.image, layout) for b in got])
    np.testing.assert_array_equal(x, images_to_tensor_layout(blobs, layout))
    if feed.default_reader() == "petastorm":
        ref = list(feed.shard_batches(url, 0, 1, fields=["image", "label"], reader="petastorm", seed=None,
                                      shuffle=False))
        np.testing.assert_array_equal(x, np.concatenate([images_to_tensor_layout(b.image, layout) for b in ref]))
    # blobs of different lengths, or a null, stay one bytes object per row
    pq.write_table(pa.table({"image": pa.array([b"ab", b"c", None], pa.binary())}), tmp_path / "part-00001.parquet")
    odd = [b.image for b in feed.shard_batches(url, 0, 1, fields=["image"], reader="arrow", seed=None, shuffle=False)]
    assert odd[-1].dtype == object and list(odd[-1]) == [b"ab", b"c", None]
