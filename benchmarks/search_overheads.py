"""A search's fixed costs, done now against the way they were, on one store, index and set
of queries.

    python benchmarks/search_overheads.py --workdir /tmp/se   # clustered:20000:0.7, 1M x 512
    python benchmarks/search_overheads.py --size 100000 --distribution hard

Besides scanning lists, a single query pays for a few things every time:

- **the re-rank's reads** (`LiveIndex.fetch`): its ~80 candidates' float16 rows gathered
  from the shards and widened to float32. *Before*: a gather per shard scattered into a
  NaN-filled array, then faiss's float16 decoder (torch is not loaded here). *Now*: rows
  gathered in the ids' order straight into place, widened by moving their bits
  (`shards.widen`). Both through the same lookup of where an id lives.
- **FAISS's search parameters** (`faiss_index.search_parameters`): before, two SWIG
  objects made per search; now made once per setting.
- **the IVF's parts** (`faiss_index._search_exact_lists`): before, its IVF and its graph
  quantizer's storage looked up through SWIG on every search; now once per index object.
- **the re-rank's scores** (`faiss_index._rerank_one`): before, the rows no longer stored
  were dropped before scoring (a copy of every row); now their scores are.

Timed (the two ways taking turns, after a warm-up pass over every candidate set): the reads
alone for each query's candidates (what the store's index finds for it at its setting),
and whole single-query searches through `Store.search`. The two must read the same values
and give the same ids. Prints a table and writes JSON (--out).
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


def fetch_before(live, image_ids: np.ndarray) -> np.ndarray:
    """LiveIndex.fetch as it was before this benchmark was written."""
    import faiss

    half = np.full((len(image_ids), live.spec.dim), np.nan, dtype=np.float16)
    for name, slots, rows in live.locate(image_ids):
        half[slots] = live.shards.get(name)[rows]
    decoder = faiss.ScalarQuantizer(live.spec.dim, faiss.ScalarQuantizer.QT_fp16)
    out = np.empty(half.shape, dtype=np.float32)
    decoder.decode_c(faiss.swig_ptr(half.view(np.uint8)), faiss.swig_ptr(out), len(half))
    return out


def rerank_one_before(query, candidates, k, fetch):
    """faiss_index._rerank_one as it was before this benchmark was written."""
    from bioindex.faiss_index import distinct

    out_scores = np.full((1, k), -np.inf, dtype=np.float32)
    out_ids = np.full((1, k), -1, dtype=np.int64)
    found = distinct(candidates[candidates >= 0])
    vectors = fetch(found)
    stored = ~np.isnan(vectors[:, 0]) if len(found) else np.zeros(0, bool)
    found, vectors = found[stored], vectors[stored]
    if len(found):
        exact = vectors @ query
        order = np.argsort(-exact, kind="stable")[:k]
        out_scores[0, : len(order)] = exact[order]
        out_ids[0, : len(order)] = found[order]
    return out_scores, out_ids


class _Forgetful(dict):
    """A cache that keeps nothing: the IVF's parts looked up on every search, as before."""

    def get(self, key, default=None):
        return default

    def setdefault(self, key, default=None):
        return default


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--distribution", default="clustered:20000:0.7")
    parser.add_argument("--queries", type=int, default=4000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path,
                        default=Path("benchmarks/results/search_overheads.json"))
    args = parser.parse_args()

    from bioindex import faiss_index
    from bioindex.store import Store
    from bioindex.store.live_index import LiveIndex

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bioindex-reads-"))
    case = prepare(workdir, args.size, args.dim, 0, args.distribution, args.queries)
    queries = np.load(case / "queries.npy")[: args.queries]
    with Store.open(case / "store") as store:
        if store.index_spec is None or not faiss_index.reranks(store.index_spec):
            store.build_index(kind="ivf-pq", rerank=True)
    store = Store.open(case / "store", read_only=True)
    store.search(queries[:1], 10)  # the index loaded
    live, spec = store._live, store.index_spec
    depth = max(10 * spec.search.get("rerank_factor", faiss_index.RERANK_FACTOR[spec.kind]),
                faiss_index.RERANK_MIN)  # fmt: skip
    params = faiss_index.search_parameters(spec)
    lists = faiss_index.exact_lists(spec, spec.search)
    candidates = [faiss_index.distinct(ids[ids >= 0]) for ids in
                  faiss_index.knn_search(live.index, queries, depth, params, lists)[1]]
    now = LiveIndex.fetch
    ways = {"before": fetch_before, "now": now}
    parts, parameters = faiss_index._LIST_PARTS, faiss_index.search_parameters
    rerank_one = faiss_index._rerank_one

    def before_parameters(spec, selector=None, text=False):
        return faiss_index._new_search_parameters(spec, selector, text)

    def use(name: str) -> None:
        before = name == "before"
        LiveIndex.fetch = ways[name]
        faiss_index._LIST_PARTS = _Forgetful() if before else parts
        faiss_index.search_parameters = before_parameters if before else parameters
        faiss_index._rerank_one = rerank_one_before if before else rerank_one
    for ids in candidates:  # every row read once: the page tables filled for both ways
        assert np.array_equal(fetch_before(live, ids), now(live, ids), equal_nan=True)
    reads: dict[str, list[float]] = {name: [] for name in ways}
    searches: dict[str, list[float]] = {name: [] for name in ways}
    found: dict[str, list[np.ndarray]] = {name: [] for name in ways}
    names = list(ways)
    for row, (query, ids) in enumerate(zip(queries, candidates)):
        for name in names if row % 2 else names[::-1]:
            started = time.perf_counter()
            ways[name](live, ids)
            reads[name].append((time.perf_counter() - started) * 1e6)
            use(name)
            started = time.perf_counter()
            found[name].append(store.search(query[None], 10)[1][0])
            searches[name].append((time.perf_counter() - started) * 1000)
            use("now")
    same = float(np.mean([np.array_equal(a, b) for a, b in zip(*found.values())]))
    rows = [{"fixed_costs": name, "rows_p50": int(np.median([len(c) for c in candidates])),
             "fetch_us_p50": round(float(np.median(reads[name])), 1),
             "search_ms_p50": round(float(np.median(searches[name])), 3),
             "search_ms_p99": round(float(np.percentile(searches[name], 99)), 3)}
            for name in names]  # fmt: skip
    print(f"{args.distribution} {args.size:,} x {args.dim}, {spec.kind} {spec.search}, "
          f"{len(queries):,} queries taking turns, {len(live.locations().names)} shards")
    print("| fixed costs | re-ranked rows | reads µs p50 | search ms p50 | search ms p99 |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['fixed_costs']} | {r['rows_p50']} | {r['fetch_us_p50']} "
              f"| {r['search_ms_p50']} | {r['search_ms_p99']} |")
    fetch_ratio = rows[1]["fetch_us_p50"] / rows[0]["fetch_us_p50"]
    search_ratio = rows[1]["search_ms_p50"] / rows[0]["search_ms_p50"]
    print(f"now / before: reads {fetch_ratio:.2f}, searches {search_ratio:.2f}; "
          f"same ids for {same:.2%} of queries")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"case": case.name, "kind": spec.kind, "search": spec.search,
                                    "rows": rows, "fetch_ratio": round(fetch_ratio, 3),
                                    "search_ratio": round(search_ratio, 3),
                                    "same_ids": round(same, 4)}, indent=2))


if __name__ == "__main__":
    main()
