"""An IVF's lists found through coded centroids (bioindex.ivf_lists) against comparing each
query with every centroid, on one store, index and set of queries.

    python benchmarks/ivf_lists.py --workdir /tmp/se          # clustered:20000:0.7, 1M x 512
    python benchmarks/ivf_lists.py --size 100000 --distribution hard

Single queries through `Store.search` at the index's tuned setting, the two ways taking
turns query by query (a slow minute of the machine falls on both), after a warm-up pass.
Reports p50 / p99, recall@10 against the exact answers, and how many queries got the same
ids both ways. Only a setting that finds its lists by comparing with every centroid
(faiss_index.exact_lists: an HNSW quantizer searched wider than its centroids) is changed.
The store comes from benchmarks/search.py's `prepare` (reused in --workdir), its index built
by `auto` where it has none. Prints a table and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search import prepare  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--distribution", default="clustered:20000:0.7")
    parser.add_argument("--queries", type=int, default=4000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ivf_lists.json"))
    args = parser.parse_args()

    from bioindex import faiss_index, ivf_lists
    from bioindex.store import Store

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bioindex-lists-"))
    case = prepare(workdir, args.size, args.dim, 0, args.distribution, args.queries)
    queries = np.load(case / "queries.npy")[: args.queries]
    truth = np.load(case / "truth.npy")[: args.queries, :10]
    with Store.open(case / "store") as store:
        if store.index_spec is None or store.index_spec.kind == "flat":
            store.build_index()
    store = Store.open(case / "store", read_only=True)
    spec = store.index_spec
    if not faiss_index.exact_lists(spec, spec.search):
        raise SystemExit(f"{spec.kind} {spec.search}: this setting does not compare with every "
                         f"centroid; nothing to compare")  # fmt: skip
    coded = ivf_lists._finder
    ways = {"every centroid": lambda storage: None, "coded centroids": coded}
    started = time.perf_counter()
    store.search(queries[:1], 10)  # the index loaded, the coded centroids built
    first_ms = (time.perf_counter() - started) * 1000
    for query in queries[:300]:
        store.search(query[None], 10)
    times: dict[str, list[float]] = {name: [] for name in ways}
    found: dict[str, list[np.ndarray]] = {name: [] for name in ways}
    names = list(ways)
    for row, query in enumerate(queries):
        for name in names if row % 2 else names[::-1]:
            ivf_lists._finder = ways[name]
            started = time.perf_counter()
            ids = store.search(query[None], 10)[1][0]
            times[name].append((time.perf_counter() - started) * 1000)
            found[name].append(ids)
    ivf_lists._finder = coded
    rows = []
    for name in names:
        recall = np.mean([len(np.intersect1d(a, b)) for a, b in zip(found[name], truth)]) / 10
        rows.append({"lists": name, "p50_ms": round(float(np.median(times[name])), 3),
                     "p99_ms": round(float(np.percentile(times[name], 99)), 3),
                     "recall_at_10": round(float(recall), 4)})  # fmt: skip
    same = float(np.mean([np.array_equal(a, b) for a, b in zip(*found.values())]))
    ratio = rows[1]["p50_ms"] / rows[0]["p50_ms"]
    print(f"{args.distribution} {args.size:,} x {args.dim}, {spec.kind} nlist {spec.nlist} "
          f"{spec.search}, {len(queries):,} single queries taking turns")
    print("| lists found by | p50 ms | p99 ms | recall@10 |")
    print("| --- | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['lists']} | {r['p50_ms']} | {r['p99_ms']} | {r['recall_at_10']} |")
    print(f"coded / every centroid p50: {ratio:.2f}; same ids for {same:.2%} of queries; "
          f"first search (index loaded, coded centroids built) {first_ms:.0f} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"case": case.name, "kind": spec.kind, "nlist": spec.nlist,
                                    "search": spec.search, "rows": rows,
                                    "p50_ratio": round(ratio, 3), "same_ids": round(same, 4),
                                    "first_search_ms": round(first_ms, 1)}, indent=2))


if __name__ == "__main__":
    main()
