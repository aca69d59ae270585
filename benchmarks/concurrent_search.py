"""Search latency while `bioindex index` appends to the store, next to the idle store.

    python benchmarks/concurrent_search.py                 # 2,000 images, then 5,000 more

A reader (the same path as `bioindex serve`: refresh to the newest generation, then search,
then fetch the hits' catalog rows) queries in a loop: first on the idle store, then while a
`bioindex index` process appends. Reported: per-query latency p50/p99/max of both phases,
their ratio, failed reads (must be 0), and how many generations the reader moved through.
On a 2-core machine the writer and the reader share the CPUs, so some slow-down is the
machine, not a lock: no read ever waits for the writer.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import make_images  # noqa: E402


def query_loop(collection, queries: np.ndarray, until) -> dict:
    latencies, failures, generations = [], 0, set()
    i = 0
    while not until():
        vector = queries[i % len(queries)]
        i += 1
        started = time.perf_counter()
        try:
            collection.refresh()
            hits = collection.search_vector(vector, k=10)
            assert len(hits) == 10
        except Exception as exc:  # noqa: BLE001 - a failed read is what is counted
            failures += 1
            print(f"read failed: {exc}", file=sys.stderr)
            continue
        latencies.append((time.perf_counter() - started) * 1000)
        generations.add(collection.store.generation())
    values = np.asarray(latencies)
    return {"queries": len(values), "failed": failures, "generations": len(generations),
            "p50_ms": round(float(np.percentile(values, 50)), 3),
            "p99_ms": round(float(np.percentile(values, 99)), 3),
            "max_ms": round(float(values.max()), 3)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=int, default=2000)
    parser.add_argument("--more", type=int, default=5000)
    parser.add_argument("--idle-seconds", type=float, default=15.0)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path,
                        default=Path("benchmarks/results/concurrent_search.json"))
    args = parser.parse_args()
    from bioindex.collection import Collection

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bioindex-conc-"))
    make_images(workdir / "base", args.base, 96)
    more = workdir / "more"
    make_images(more, args.more, 96)
    for path in more.rglob("*.jpg"):  # distinct names from the base set
        path.rename(path.with_name("m" + path.name))
    store = workdir / "store"
    subprocess.run(["rm", "-rf", str(store)], check=True)
    index = [sys.executable, "-m", "bioindex.cli", "index", "--store", str(store), "--model",
             "bioclip-demo", "--device", "cpu", "-q"]  # fmt: skip
    subprocess.run([*index, str(workdir / "base")], check=True)
    rng = np.random.default_rng(0)
    with Collection.open(store, read_only=True) as collection:
        queries = rng.normal(size=(256, collection.store.dim)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        deadline = time.monotonic() + args.idle_seconds
        idle = query_loop(collection, queries, lambda: time.monotonic() > deadline)
        started = time.perf_counter()
        writer = subprocess.Popen([*index, str(more), "--commit-every", "512"],
                                  stdout=subprocess.PIPE, text=True)
        busy = query_loop(collection, queries, lambda: writer.poll() is not None)
        busy["index_seconds"] = round(time.perf_counter() - started, 1)
        busy["index_summary"] = writer.stdout.read().strip()
        collection.refresh()
        final = collection.store.live_count()
    rows = [("idle store", idle), ("during bioindex index", busy)]
    print("| phase | queries | failed | generations | p50 ms | p99 ms | max ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in rows:
        print(f"| {name} | {r['queries']} | {r['failed']} | {r['generations']} | {r['p50_ms']} "
              f"| {r['p99_ms']} | {r['max_ms']} |")
    ratio = {k: round(busy[k] / idle[k], 2) for k in ("p50_ms", "p99_ms")}
    print(f"during / idle: p50 {ratio['p50_ms']}x, p99 {ratio['p99_ms']}x; "
          f"{final} images live at the end; writer: {busy['index_summary']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"idle": idle, "during_index": busy, "ratio": ratio,
                                    "images_at_end": final}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
