"""Embeddings out: Parquet (one row per image) or .npy (+ a CSV of the rows, in order).

Vectors are written L2-normalised as float32 (the store keeps float16; normalising again
after the widening makes every row a unit vector). Both formats stream: one shard batch is
in memory at a time, whatever the store's size.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bioindex.store import Store

KEY_COLUMNS = ("image_id", "uri", "occurrence_id", "catalog_number", "scientific_name")
BATCH = 2048  # rows per step: a few MB in flight whatever the store holds


def chosen_batches(store: Store, image_ids: np.ndarray | None,
                   batch: int = BATCH) -> Iterator[tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """(ids, unit float32 vectors) of the live images (only `image_ids` when given)."""
    for ids, vectors in store.iter_live_vectors(batch):
        if image_ids is not None:
            keep = np.isin(ids, image_ids)
            ids, vectors = ids[keep], vectors[keep]
        if len(ids):
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            yield ids, vectors / np.maximum(norms, 1e-12)


def write_parquet(store: Store, path: str | os.PathLike[str],
                  image_ids: np.ndarray | None = None) -> int:  # fmt: skip
    """Write the embeddings with their key columns; returns the number of rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("image_id", pa.int64()), *((c, pa.string()) for c in KEY_COLUMNS[1:]),
                        ("embedding", pa.list_(pa.float32(), store.dim))])  # fmt: skip
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    rows = 0
    try:
        # No dictionary for the floats: it cannot pay, and it holds pages while it tries.
        with pq.ParquetWriter(tmp, schema, compression="zstd",
                              use_dictionary=["scientific_name"]) as writer:
            for ids, vectors in chosen_batches(store, image_ids):
                keys = store.catalog.key_columns(ids.tolist())
                flat = pa.array(vectors.reshape(-1), type=pa.float32())
                table = pa.table({"image_id": pa.array(ids, pa.int64()),
                                  **{c: pa.array(keys[c], pa.string()) for c in KEY_COLUMNS[1:]},
                                  "embedding": pa.FixedSizeListArray.from_arrays(flat, store.dim)},
                                 schema=schema)  # fmt: skip
                writer.write_table(table)
                rows += len(ids)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return rows


def write_npy(store: Store, path: str | os.PathLike[str],
              image_ids: np.ndarray | None = None) -> int:  # fmt: skip
    """Write the embeddings as one float32 [rows, dim] .npy and, beside it, `<name>.csv`
    with the key columns of each row in the same order; returns the number of rows."""
    target = Path(path)
    count = len(image_ids) if image_ids is not None else store.live_count()
    table = target.with_suffix(".csv")
    tmp, tmp_table = (p.with_name(p.name + ".tmp") for p in (target, table))
    rows = 0
    try:
        with open(tmp, "wb") as out, open(tmp_table, "w", newline="", encoding="utf-8") as side:
            # The header says the final shape up front, so rows can be appended as they come.
            np.lib.format.write_array_header_1_0(
                out, {"descr": "<f4", "fortran_order": False, "shape": (count, store.dim)})
            writer = csv.writer(side)
            writer.writerow(KEY_COLUMNS)
            for ids, vectors in chosen_batches(store, image_ids):
                out.write(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
                keys = store.catalog.key_columns(ids.tolist())
                writer.writerows(zip(ids.tolist(), *(keys[c] for c in KEY_COLUMNS[1:])))
                rows += len(ids)
        if rows != count:  # an id asked for that is not live
            raise ValueError(f"{count - rows} of the chosen images have no live vector")
        os.replace(tmp, target)
        os.replace(tmp_table, table)
    finally:
        tmp.unlink(missing_ok=True)
        tmp_table.unlink(missing_ok=True)
    return rows
