"""lake.ParquetPart: what a task attempt that dies mid-write leaves behind, and its clean-up."""
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core import lake

SCHEMA = pa.schema([("x", pa.int64())])


def test_a_dead_attempt_leaves_only_a_hidden_file_that_readers_skip_and_cleanup_removes(tmp_path):
    uri = f"file://{tmp_path}/train/part-00000.parquet"
    dead = lake.ParquetPart(uri, SCHEMA, 1, attempt=7)
    dead.write(pa.table({"x": [1, 2]}, schema=SCHEMA))  # flushed to the temporary file, never closed
    assert [p.name for p in (tmp_path / "train").iterdir()] == ["_tmp-7-part-00000.parquet"]

    retry = lake.ParquetPart(uri, SCHEMA, 1 << 20, attempt=8)
    for i in range(3):
        retry.write(pa.table({"x": [i]}, schema=SCHEMA))
    retry.close()
    assert pq.read_table(tmp_path / "train").column("x").to_pylist() == [0, 1, 2]  # the dead file is skipped
    assert pq.ParquetFile(tmp_path / "train" / "part-00000.parquet").num_row_groups == 1

    assert lake.remove_temporaries(f"file://{tmp_path}") == 1
    assert [p.name for p in (tmp_path / "train").iterdir()] == ["part-00000.parquet"]
