"""A metadata rerun over a large catalog: `Store.update_metadata` for every image of a store
(a corrected --metadata file naming them all), against the step that made it quadratic —
picking the changed rows with np.isin over object arrays — timed in the same run.

    python benchmarks/metadata_update.py                   # 10k, 50k, 200k images
    python benchmarks/metadata_update.py --sizes 1000000

Rows are committed with random 8-d vectors (no model); the update gives each image a
country and its name again, so every row changes. np.isin is timed up to --isin-limit
images (it grows with the square). Prints a table, writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bioindex.store import Store
from bioindex.store.records import ImageRecord

MODEL = {"name": "bench", "source": "bench", "weights_sha256": "0" * 64, "dim": 8,
         "image_size": 224, "mean": [0.5] * 3, "std": [0.5] * 3, "preprocess": "eval",
         "normalize": "l2"}  # fmt: skip
CHUNK = 50_000


def build(root: Path, count: int) -> Store:
    store = Store.create(root, MODEL)
    rng = np.random.default_rng(0)
    for start in range(0, count, CHUNK):
        stop = min(count, start + CHUNK)
        records = [ImageRecord(f"/x/{i}.jpg", 1, 1.0, "sha", 10, 10,
                               {"scientificName": f"Genus{i % 100} sp{i % 1000}"})
                   for i in range(start, stop)]  # fmt: skip
        vectors = rng.normal(size=(stop - start, 8)).astype(np.float32)
        store.commit(records, vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    return store


def measure(count: int, isin_limit: int, workdir: Path) -> dict:
    root = workdir / f"store-{count}"
    shutil.rmtree(root, ignore_errors=True)
    store = build(root, count)
    items = [(f"/x/{i}.jpg", {"countryCode": "KE",
                              "scientificName": f"Genus{i % 100} sp{i % 1000}"})
             for i in range(count)]  # fmt: skip
    started = time.perf_counter()
    changed = store.update_metadata(items)
    update = time.perf_counter() - started
    store.close()
    isin = None
    if count <= isin_limit:
        uris = np.array([uri for uri, _ in items], dtype=object)
        started = time.perf_counter()
        np.isin(uris, uris)
        isin = time.perf_counter() - started
    shutil.rmtree(root, ignore_errors=True)
    return {"images": count, "changed": changed, "update_seconds": round(update, 2),
            "isin_seconds": None if isin is None else round(isin, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    parser.add_argument("--isin-limit", type=int, default=50_000)
    parser.add_argument("--out", type=Path,
                        default=Path("benchmarks/results/metadata_update.json"))  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        rows = [measure(n, args.isin_limit, Path(workdir)) for n in args.sizes]
    print("\nimages    rows changed  update_metadata  np.isin step alone (before)")
    for r in rows:
        isin = "-" if r["isin_seconds"] is None else f"{r['isin_seconds']} s"
        print(f"{r['images']:>8}  {r['changed']:>12}  {r['update_seconds']:>13} s  {isin}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
