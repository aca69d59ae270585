"""What a search answer's rows cost: 10 random catalog rows read from the Parquet files
against the same rows held in memory (Store.hold_rows_in_memory, what the server does).

    python benchmarks/catalog_rows.py --store /tmp/sb/case-demo-1000000-64-s0/store

New random ids every lookup (the per-generation row cache never helps here: a cold answer).
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def _resident_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _lookups(store, ids: np.ndarray, rounds: int, rng: np.random.Generator) -> dict:
    times = []
    for _ in range(rounds):
        wanted = [int(i) for i in rng.choice(ids, 10, replace=False)]
        started = time.perf_counter()
        found = store.rows(wanted)
        times.append((time.perf_counter() - started) * 1000)
        assert len(found) == 10
    return {"p50_ms": round(float(np.percentile(times, 50)), 3),
            "p99_ms": round(float(np.percentile(times, 99)), 3)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/catalog_rows.json"))
    args = parser.parse_args()
    from bioindex.store import Store

    rng = np.random.default_rng(5)
    with Store.open(args.store, read_only=True) as store:
        ids = store.catalog.live_ids()
        files = _lookups(store, ids, args.rounds, rng)
        before = _resident_mb()
        started = time.perf_counter()
        held = store.hold_rows_in_memory()
        load = time.perf_counter() - started
        memory = _lookups(store, ids, args.rounds, rng) if held else None
        report = {"store": str(args.store), "images": len(ids), "files": files,
                  "memory": memory, "load_s": round(load, 2),
                  "resident_mb_added": round(_resident_mb() - before, 1)}  # fmt: skip
    print(f"{len(ids):,} images; 10 random rows per lookup, {args.rounds} lookups\n")
    print(f"{'rows from':<10}{'p50 ms':>10}{'p99 ms':>10}")
    for name in ("files", "memory"):
        if report[name]:
            print(f"{name:<10}{report[name]['p50_ms']:>10.2f}{report[name]['p99_ms']:>10.2f}")
    print(f"\nheld in memory: {held}; loaded in {report['load_s']} s, "
          f"{report['resident_mb_added']} MB more resident")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
