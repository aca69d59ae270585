"""Where each live image's vector is stored: its shard and row, looked up by image_id.

A re-rank asks this for its ~80 candidates on every search, so the lookup is a few numpy
calls: a table from id to (shard, row) where ids are mostly dense, else a binary search
over the sorted live ids.
"""

from __future__ import annotations

import numpy as np

MISSING = -1  # the shard code of an id that is not live


class Locations:
    """The (shard, row) of every live image_id of one catalog generation."""

    def __init__(self, ids: np.ndarray, codes: np.ndarray, rows: np.ndarray, names: list[str]):
        self.names = names  # shard file names by code
        self.ids, self.codes, self.rows = ids, codes, rows
        self._code_of: np.ndarray | None = None
        if len(ids) and ids[-1] <= 4 * len(ids) + 1024:
            # Ids are mostly dense: a table answers in O(k) what a binary search over a
            # million ids took 0.2 ms of every re-rank to find. Its last entry stands for
            # every id outside it (np.clip sends negative ids there too).
            self._code_of = np.full(int(ids[-1]) + 2, MISSING, dtype=np.int32)
            self._code_of[ids] = codes
            self._row_of = np.zeros(len(self._code_of), dtype=np.int32)  # 8 bytes an id
            self._row_of[ids] = rows

    def find(self, image_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard code, row) of each id; code MISSING where it is not live."""
        image_ids = np.asarray(image_ids, dtype=np.int64)
        if self._code_of is not None:
            at = np.clip(image_ids, -1, len(self._code_of) - 1)
            return self._code_of[at], self._row_of[at]
        if not len(self.ids):
            return np.full(len(image_ids), MISSING, np.int32), np.zeros(len(image_ids), np.int64)
        at = np.minimum(np.searchsorted(self.ids, image_ids), len(self.ids) - 1)
        return np.where(self.ids[at] == image_ids, self.codes[at], MISSING), self.rows[at]


def runs(codes: np.ndarray) -> tuple[np.ndarray | None, list[tuple[int, int, int]]]:
    """Positions grouped by shard: (order, [(code, start, end)]), where positions
    order[start:end] (start:end itself when order is None: the codes already ascend, as
    a re-rank's sorted ids in shards written in id order do) share one code."""
    order = None
    if len(codes) > 1 and (codes[1:] < codes[:-1]).any():
        order = np.argsort(codes, kind="stable")
        codes = codes[order]
    bounds = [0, *(np.flatnonzero(codes[1:] != codes[:-1]) + 1).tolist(), len(codes)]
    return order, [(int(codes[start]), start, end)
                   for start, end in zip(bounds[:-1], bounds[1:]) if end > start]  # fmt: skip
