"""Reading stored vectors by image_id: through the catalog (`Store.vectors`) against the
index's own id table (`Store.indexed_vectors`), alone and as "more like this" (a search
from an indexed image, what `search_id` and the page's neighbours do).

    python benchmarks/vector_reads.py --store /tmp/sb/case-demo-1000000-64-s0/store

Both ways run in one process on the same random ids, in turns (two rounds each), with the
store's rows held in memory as the server holds them. Prints a table, writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--ids", type=int, default=200, help="random live ids read")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/vector_reads.json"))
    args = parser.parse_args()

    from bioindex.search.query import search_vector
    from bioindex.store import Store

    with Store.open(args.store, read_only=True) as store:
        store.index()
        store.hold_rows_in_memory()
        live = next(store.iter_live_vectors(1_000_000))[0]
        ids = np.random.default_rng(0).choice(live, min(args.ids, len(live)), replace=False)
        ways = {"catalog (Store.vectors)": store.vectors,
                "index id table (Store.indexed_vectors)": store.indexed_vectors}  # fmt: skip
        for read in ways.values():
            read([int(ids[0])])  # first calls: connections, the id table
        timings: dict[str, dict[str, list[float]]] = {w: {"read": [], "search": []} for w in ways}
        for _ in range(2):
            for name, read in ways.items():
                started = time.perf_counter()
                for i in ids:
                    read([int(i)])
                timings[name]["read"].append((time.perf_counter() - started) / len(ids))
                started = time.perf_counter()
                for i in ids:
                    search_vector(store, read([int(i)])[0], 10, exclude={int(i)})
                timings[name]["search"].append((time.perf_counter() - started) / len(ids))
        live_count, kind = store.live_count(), store.index_spec.kind
    rows = [{"way": name, "read_ms": 1000 * min(t["read"]), "search_ms": 1000 * min(t["search"])}
            for name, t in timings.items()]  # fmt: skip
    base = rows[0]
    print(f"\n{live_count:,} images, {kind} index, {len(ids)} ids (best of two rounds)\n")
    print("| way | read one vector, ms | more like this (read + search k=10), ms | vs catalog |")
    print("| --- | ---: | ---: | --- |")
    for row in rows:
        print(f"| {row['way']} | {row['read_ms']:.3f} | {row['search_ms']:.3f} | "
              f"read {base['read_ms'] / row['read_ms']:.1f}×, "
              f"search {base['search_ms'] / row['search_ms']:.1f}× |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"store": str(args.store), "images": live_count,
                                    "kind": kind, "results": rows}, indent=2))  # fmt: skip
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
