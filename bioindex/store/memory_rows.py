"""A generation's image rows held in memory, for a long-lived reader (the server).

DuckDB reads Parquet a row group at a time and does not skip row groups for an IN list
whose ids span the store, so 10 result rows cost 16-29 ms at 1M images — every search
answer pays that, where the index search costs 0.05-0.3 ms. The same rows taken from an
Arrow table in memory cost 0.18 ms. That table is ~200 bytes a row and more with rich
metadata (the 1M demo catalog: 192 MB, the process 338 MB larger, read in 1 s), so it is
held only up to MAX_ROWS and only where asked (Store.hold_rows_in_memory).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bioindex.store.catalog import INT64_RANGE, shown_row

MAX_ROWS = 2_000_000

log = logging.getLogger(__name__)


class MemoryRows:
    """One generation's `images` rows, found by image_id."""

    def __init__(self, generation: int, table: Any):
        self.generation = generation
        self.table = table
        ids = table.column("image_id").to_numpy()
        self._order = np.argsort(ids, kind="stable")
        self._sorted = ids[self._order]

    @classmethod
    def load(cls, generation: int, paths: Sequence[Path]) -> MemoryRows | None:
        """The rows of these Parquet files; None past MAX_ROWS or when an image_id repeats
        (rows are then read from the files)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if sum(pq.ParquetFile(p).metadata.num_rows for p in paths) > MAX_ROWS:
            return None
        tables = [pq.read_table(p) for p in paths]
        if not tables:
            return None
        table = pa.concat_tables(tables, promote_options="default").combine_chunks()
        del tables
        # One contiguous table takes rows 40x faster than per-file chunks; the copies made
        # on the way are handed back (the 1M demo catalog: 658 MB resident without, 192 kept).
        pa.default_memory_pool().release_unused()
        memory = cls(generation, table)
        if len(memory._sorted) > 1 and bool(np.any(memory._sorted[1:] == memory._sorted[:-1])):
            return None
        return memory

    def rows(self, image_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """Rows by image_id (those it holds), as Catalog.rows gives them."""
        # Numbers no int64 holds name no image (a fuzzed /api/thumbnails/2^63 was a 500).
        low, high = INT64_RANGE
        wanted = np.asarray([int(i) for i in image_ids if low <= int(i) <= high], dtype=np.int64)
        if not len(wanted) or not len(self._sorted):
            return {}
        at = np.minimum(np.searchsorted(self._sorted, wanted), len(self._sorted) - 1)
        held = self._sorted[at] == wanted
        taken = self.table.take(self._order[at[held]]).to_pylist()
        return {int(row["image_id"]): shown_row(row) for row in taken}


class HeldRows:
    """A store's image rows in memory for whichever generation it is at: loaded when asked
    to hold them, then again in the background after each move to a newer generation
    (readers use the files meanwhile)."""

    def __init__(self, root: Path):
        self.root = root
        self._wanted = False
        self._memory: MemoryRows | None = None
        self._loading: int | None = None  # the generation a load was started for
        self._lock = threading.Lock()

    def hold(self, snap: Any) -> bool:
        """Hold them from now on, loading `snap`'s now; whether they are held."""
        self._wanted = True
        with self._lock:
            self._loading = snap.generation
        self._load(snap)
        return self.current(snap) is not None

    def current(self, snap: Any) -> MemoryRows | None:
        """`snap`'s rows if held and loaded; else None (a load starts if none has)."""
        if not self._wanted:
            return None
        memory = self._memory
        if memory is not None and memory.generation == snap.generation:
            return memory
        with self._lock:
            if self._loading == snap.generation:
                return None  # loading, or not to be held
            self._loading = snap.generation
        threading.Thread(target=self._load, args=(snap,), name="bioindex-rows",
                         daemon=True).start()  # fmt: skip
        return None

    def _load(self, snap: Any) -> None:
        try:
            memory = MemoryRows.load(snap.generation, [self.root / r["file"]
                                                       for r in snap.images])  # fmt: skip
        except Exception as exc:  # the files stay the source: a failed copy costs speed only
            log.warning("image rows of generation %d stay on disk: %s", snap.generation, exc)
            return
        with self._lock:  # a slow load of an older generation must not win
            if memory is not None and (self._memory is None
                                       or memory.generation > self._memory.generation):
                self._memory = memory
