"""What a job given hostile input must leave alone, pictured before it runs and checked after:
nothing new next to the lake, a folder planted there (``victim/``, where a path that climbs out
of the lake lands) unchanged, and every file already in the lake still there, unchanged.

    fence = Fence(lake_root)      # plants <lake>/../victim/keep.txt, pictures both
    ... run the job ...
    fence.check()                 # or check(may_write=("predictions/m/",)) where the job may add
"""
from __future__ import annotations

import os
from pathlib import Path


def picture(root: Path) -> dict[str, tuple[int, int] | None]:
    """Every file (size, mtime in ns) and folder (None) under ``root``, by path relative to it."""
    out: dict[str, tuple[int, int] | None] = {}
    for d, dirs, files in os.walk(root):
        rel = os.path.relpath(d, root)
        for name in dirs:
            out[os.path.normpath(os.path.join(rel, name))] = None
        for name in files:
            st = os.stat(os.path.join(d, name))
            out[os.path.normpath(os.path.join(rel, name))] = (st.st_size, st.st_mtime_ns)
    return out


class Fence:
    def __init__(self, lake: str | Path):
        self.lake = Path(str(lake).removeprefix("file://"))
        self.victim = self.lake.parent / "victim"
        self.victim.mkdir(exist_ok=True)
        (self.victim / "keep.txt").write_text("data that is not the lake's\n")
        self.before = self._now()

    def _now(self) -> dict:
        return {"beside": sorted(os.listdir(self.lake.parent)), "victim": picture(self.victim),
                "lake": picture(self.lake) if self.lake.exists() else {}}

    def check(self, may_write: tuple[str, ...] = ()) -> None:
        """Nothing written beside the lake or in ``victim/``; nothing in the lake lost, changed
        or added but under the prefixes ``may_write`` (paths relative to the lake)."""
        now = self._now()
        assert now["beside"] == self.before["beside"], "written next to the lake"
        assert now["victim"] == self.before["victim"], "the folder next to the lake changed"
        was, lake = self.before["lake"], now["lake"]
        lost = sorted(p for p in was if p not in lake)
        changed = sorted(p for p in was if p in lake and lake[p] != was[p] and not p.startswith(may_write))
        above = {a for p in may_write for a in _ancestors(p.rstrip("/") + "/x")}  # the folders they need may be new
        added = sorted(p for p in lake if p not in was and not p.startswith(may_write) and p not in above)
        assert (lost, changed, added) == ([], [], []), f"lake: lost {lost}, changed {changed}, added {added}"


def _ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]
