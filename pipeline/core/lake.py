"""Small-file I/O and atomic moves on the lake, through fsspec.

Parquet goes through Spark or pyarrow; everything else the jobs write (manifests, pointers,
model artifacts, checkpoints) goes through these helpers so that file://, hdfs:// and s3a://
lakes behave the same. They also run on executors, where there is no Spark session.
"""
from __future__ import annotations

import json
import os
import uuid
from datetime import datetime, timezone
from typing import Any, Callable

import fsspec

from pipeline.core.layout import LATEST, latest_pointer


def _fs(uri: str):
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def exists(uri: str) -> bool:
    fs, path = _fs(uri)
    return fs.exists(path)


def read_bytes(uri: str) -> bytes:
    fs, path = _fs(uri)
    with fs.open(path, "rb") as f:
        return f.read()


def file_reader(uri: str) -> Callable[[str], bytes]:
    """A function reading whole files on uri's filesystem, resolved once: for many small files
    (images) the lookup read_bytes does per call costs more than the read (bench/README.md)."""
    fs, _ = _fs(uri)
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    if "file" in protocols:
        def read_local(u: str) -> bytes:
            with open(u[len("file://"):] if u.startswith("file://") else u, "rb") as f:
                return f.read()
        return read_local
    return lambda u: fs.cat_file(fsspec.core.split_protocol(u)[1])


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def write_bytes(uri: str, data: bytes) -> None:
    """Write via a temporary sibling and rename, so readers never see a partial file."""
    fs, path = _fs(uri)
    parent = path.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
    with fs.open(tmp, "wb") as f:
        f.write(data)
    fs.mv(tmp, path)


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def makedirs(uri: str) -> None:
    fs, path = _fs(uri)
    fs.makedirs(path, exist_ok=True)


def listdir(uri: str) -> list[str]:
    """Base names of the entries under a directory URI ([] if it does not exist)."""
    fs, path = _fs(uri)
    if not fs.exists(path):
        return []
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))


def list_files(uri: str) -> list[tuple[str, int]]:
    """(URI, size) of every file under a directory (recursive), sorted; names starting with
    "." or "_", and anything under such a directory, are skipped, as Spark's file sources do."""
    fs, path = _fs(uri)
    if not fs.exists(path):
        return []
    proto = uri.split("://", 1)[0] if "://" in uri else "file"
    if proto == "file" and os.path.isdir(path):
        return sorted(_walk_local(path.rstrip("/")))
    root = path.rstrip("/") + "/"
    # fsspec paths drop the scheme and, for hdfs://namenode:port/..., the authority: put back
    # what the given URI had in front of its path.
    stem = uri.rstrip("/")
    prefix = stem[:-len(path.rstrip("/"))] if path.rstrip("/") and stem.endswith(path.rstrip("/")) else f"{proto}://"
    out = []
    for p, info in fs.find(path, detail=True).items():
        if info.get("type") != "file" or any(part.startswith((".", "_")) for part in p[len(root):].split("/")):
            continue
        out.append((f"{prefix}{p}", int(info.get("size", 0))))
    return sorted(out)


def _walk_local(root: str) -> list[tuple[str, int]]:
    """list_files for a local directory with os.scandir: about half of fsspec's time a file
    (bench/README.md), and the listing is most of the driver's planning for many small files."""
    out, stack = [], [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for e in entries:
                if e.name.startswith((".", "_")):
                    continue
                if e.is_dir():
                    stack.append(e.path)
                elif e.is_file():
                    out.append((f"file://{e.path}", e.stat().st_size))
    return out


def remove_temporaries(uri: str) -> int:
    """Delete the ``_tmp-*`` files ParquetPart leaves when a task attempt dies mid-write (call
    once the job is over: no attempt is writing any more). Returns how many there were."""
    fs, path = _fs(uri)
    if not fs.exists(path):
        return 0
    stale = [p for p in fs.find(path) if p.rsplit("/", 1)[-1].startswith("_tmp-")]
    for p in stale:
        fs.rm(p)
    return len(stale)


def remove(uri: str) -> None:
    fs, path = _fs(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def move(src: str, dst: str) -> None:
    fs, s = _fs(src)
    _, d = _fs(dst)
    fs.mv(s, d, recursive=True)


def spark_path(uri: str) -> str:
    """The name Spark gives a file: local files are file:/path, not file:///path."""
    return "file:" + uri[len("file://"):] if uri.startswith("file://") else uri


def local_path(uri: str) -> str:
    """The filesystem path of a file:// URI (for libraries that want a path)."""
    return _fs(uri)[1]


def set_latest(parent_uri: str, name: str) -> None:
    """Point <parent>/_latest at a completed output. Call only after the output is whole."""
    write_bytes(latest_pointer(parent_uri), (name + "\n").encode())


def get_latest(parent_uri: str) -> str:
    uri = latest_pointer(parent_uri)
    if not exists(uri):
        raise FileNotFoundError(f"no completed output under {parent_uri} (missing {LATEST}); run the previous stage first")
    return read_bytes(uri).decode().strip()


def new_run_id() -> str:
    """Sortable and unique: UTC timestamp plus a short random suffix."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def temporary_name(uri: str, attempt: int) -> tuple[Any, str, str]:
    """(filesystem, path, hidden temporary path beside it) for a file a task attempt writes and
    then renames into place; the parent directory is created."""
    fs, path = _fs(uri)
    parent, name = path.rsplit("/", 1)
    fs.makedirs(parent, exist_ok=True)
    return fs, path, f"{parent}/_tmp-{attempt}-{name}"


class ParquetPart:
    """One Parquet file written by one task: row groups of about row_group_bytes, through a
    hidden temporary name (``_tmp-<attempt>-<name>``, which readers skip) and a rename on
    close, so a retried or speculative attempt replaces the file whole and a reader never sees
    part of one."""

    def __init__(self, uri: str, schema, row_group_bytes: int, attempt: int = 0):
        import pyarrow.parquet as pq

        self.schema, self.row_group_bytes = schema, row_group_bytes
        self.fs, self.path, self.tmp = temporary_name(uri, attempt)
        self.file = self.fs.open(self.tmp, "wb")
        self.writer = pq.ParquetWriter(self.file, schema)
        self.pending: list = []
        self.pending_bytes = 0
        self.rows = 0

    def write(self, table) -> None:
        self.pending.append(table)
        self.pending_bytes += table.nbytes
        self.rows += table.num_rows
        if self.pending_bytes >= self.row_group_bytes:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        if self.pending:
            self.writer.write_table(pa.concat_tables(self.pending), row_group_size=1 << 30)
        self.pending, self.pending_bytes = [], 0

    def close(self) -> None:
        self.flush()
        self.writer.close()
        self.file.close()
        self.fs.mv(self.tmp, self.path)
