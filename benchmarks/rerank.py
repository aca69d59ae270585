"""Re-ranking a batch of queries: in blocks of rows against row by row, on one store.

    python benchmarks/rerank.py                            # hard 100k x 512, IVF-PQ
    python benchmarks/rerank.py --distribution default --rounds 5

A re-ranked search reads each query's candidates' stored vectors (`fetch`) and scores them
exactly. `faiss_index.rerank_exact` takes a batch in blocks of rows, one fetch per block;
before, every query fetched its own (what `_rerank_one` still does for a single query).
Both run on the same store, index and queries, in turn (`--rounds`), and must give the same
ids: the batch's queries/s, and one query at a time (p50, to show it did not change).
The store comes from benchmarks/search.py's `prepare` (reused across runs in --workdir).
Prints a table and writes JSON (--out).
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
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--distribution", default="hard")
    parser.add_argument("--kind", default="ivf-pq")
    parser.add_argument("--queries", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/rerank.json"))
    args = parser.parse_args()

    from bioindex import faiss_index
    from bioindex.store import Store

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bioindex-rerank-"))
    case = prepare(workdir, args.size, args.dim, 0, args.distribution, args.queries)
    queries = np.load(case / "queries.npy")[: args.queries]
    batched = faiss_index.rerank_exact

    def row_by_row(queries, candidates, k, fetch):
        parts = [faiss_index._rerank_one(q, c, k, fetch) for q, c in zip(queries, candidates)]
        return np.concatenate([s for s, _ in parts]), np.concatenate([i for _, i in parts])

    timings: dict[str, list[float]] = {"row by row": [], "blocks": []}
    single: dict[str, list[float]] = {"row by row": [], "blocks": []}
    with Store.open(case / "store") as store:
        if store.index_spec is None or store.index_spec.kind != args.kind:
            store.build_index(kind=args.kind, rerank=True)
        spec = store.index_spec
        answers = {}
        for _ in range(args.rounds):
            for name, rerank in (("row by row", row_by_row), ("blocks", batched)):
                faiss_index.rerank_exact = rerank
                started = time.perf_counter()
                answers[name] = store.search(queries, 10)[1]
                timings[name].append(time.perf_counter() - started)
                for query in queries[:300]:
                    started = time.perf_counter()
                    store.search(query[None], 10)
                    single[name].append((time.perf_counter() - started) * 1000)
        faiss_index.rerank_exact = batched
    assert np.array_equal(answers["row by row"], answers["blocks"]), "the ids differ"
    rows = [{"rerank": name, "batch_qps": round(len(queries) / float(np.median(t))),
             "single_p50_ms": round(float(np.median(single[name])), 3)}
            for name, t in timings.items()]  # fmt: skip
    ratio = rows[1]["batch_qps"] / rows[0]["batch_qps"]
    print(f"{args.distribution} {args.size:,} x {args.dim}, {spec.kind} {spec.search}, "
          f"{len(queries):,} queries, median of {args.rounds} rounds in turn")
    print(f"{'re-rank':12} {'batch q/s':>10} {'one query p50 ms':>17}")
    for r in rows:
        print(f"{r['rerank']:12} {r['batch_qps']:>10,} {r['single_p50_ms']:>17}")
    print(f"blocks / row by row: {ratio:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"case": case.name, "kind": spec.kind, "search": spec.search,
                                    "rows": rows, "ratio": round(ratio, 2)}, indent=2))


if __name__ == "__main__":
    main()
