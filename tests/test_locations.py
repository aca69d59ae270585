"""Where a live image's vector is stored, looked up by image_id (bioindex.store.locations)."""

from __future__ import annotations

import numpy as np
import pytest

from bioindex.store.locations import MISSING, Locations, runs


def _catalog(ids: np.ndarray, shard_rows: int) -> tuple:
    positions = np.arange(len(ids))
    return (ids, (positions // shard_rows).astype(np.int32), positions % shard_rows,
            [f"shard-{code}" for code in range(len(ids) // shard_rows + 1)])  # fmt: skip


@pytest.mark.parametrize("step", [1, 3, 50])  # dense ids (a table), gappy, sparse (a search)
def test_an_id_is_found_in_its_shard_and_row_and_any_other_is_missing(step: int) -> None:
    ids = np.arange(10, 10 + 1_000 * step, step, dtype=np.int64)
    where = Locations(*_catalog(ids, 128))
    asked = np.concatenate([ids[[0, 5, 999, 500, 128, 127]],
                            [-5, -1, 0, 9, ids[-1] + 1, ids[-1] + step, 10**12]])  # fmt: skip
    if step > 1:
        asked = np.concatenate([asked, ids[:20] + 1])  # the gaps between live ids
    codes, rows = where.find(asked)
    live = np.isin(asked, ids)
    assert (codes[~live] == MISSING).all()
    position = np.searchsorted(ids, asked[live])
    assert np.array_equal(codes[live], position // 128)
    assert np.array_equal(rows[live], position % 128)


def test_an_empty_catalog_holds_nothing() -> None:
    codes, rows = Locations(np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64),
                            []).find(np.array([0, 1, -1]))  # fmt: skip
    assert (codes == MISSING).all() and len(rows) == 3


@pytest.mark.parametrize("codes", [[0, 0, 1, 1, 1, 3], [2, 0, 2, -1, 0, 1, -1], [4], []])
def test_positions_are_grouped_by_shard(codes: list[int]) -> None:
    codes_array = np.array(codes, dtype=np.int32)
    order, found = runs(codes_array)
    ascending = codes == sorted(codes)
    assert (order is None) == ascending
    positions = np.arange(len(codes)) if order is None else order
    seen = []
    for code, start, end in found:
        assert end > start and (codes_array[positions[start:end]] == code).all()
        seen.extend(positions[start:end].tolist())
    assert sorted(seen) == list(range(len(codes)))
    assert [code for code, _, _ in found] == sorted(set(codes))
