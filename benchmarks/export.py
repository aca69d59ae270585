"""Embeddings out: the streaming Parquet and .npy exports against loading every vector.

    python benchmarks/export.py                 # 100,000 x 512 (float16 shards, as stored)
    python benchmarks/export.py --rows 1000000  # a million

Each way runs in a fresh process so its peak memory (VmHWM) is its own; the figure shown
is the peak above the process's memory once the store is open. The baseline, in the same
run, is what a user of the Python API would write without an export: read every vector
with `store.vectors(all ids)` and `np.save` it. Target: the exports' peak stays flat as
the store grows (a batch, not the store).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

WAYS = {
    "baseline: all vectors in memory + np.save": """
ids = store.catalog.live_ids().tolist()
np.save(out + ".npy", store.vectors(ids))""",
    "export --format parquet": "collection.export(out + '.parquet', 'parquet')",
    "export --format npy": "collection.export(out + '.npy', 'npy')",
}
RUNNER = """
import json, sys, time
import numpy as np
from bioindex import Collection
def field(name):
    for line in open("/proc/self/status"):
        if line.startswith(name + ":"):
            return int(line.split()[1]) / 1024
with Collection.open(sys.argv[1], read_only=True) as collection:
    store = collection.store
    out = sys.argv[2]
    import pyarrow.parquet  # its libraries load before the baseline is taken, for all ways
    open("/proc/self/clear_refs", "w").write("5")
    base = field("VmRSS")
    started = time.perf_counter()
{body}
    seconds = time.perf_counter() - started
print(json.dumps({{"seconds": seconds, "peak_mb": field("VmHWM") - base}}))
"""


def make_store(path: Path, rows: int, dim: int) -> None:
    from bioindex.store import ImageRecord, Store

    model = {"name": "random", "source": "benchmark", "weights_sha256": "0", "dim": dim,
             "image_size": 224, "mean": [0.5] * 3, "std": [0.5] * 3, "preprocess": "eval"}
    rng = np.random.default_rng(0)
    chunk = 50_000
    with Store.create(path, model) as store:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            vectors = rng.standard_normal((n, dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            store.commit([ImageRecord(f"/photos/{i}.jpg", 1, 1.0, None, 1, 1,
                                      {"catalogNumber": f"C{i}"})
                          for i in range(start, start + n)], vectors)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/export.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bioindex-export-"))
    make_store(work / "store", args.rows, args.dim)
    data_mb = args.rows * args.dim * 4 / 2**20
    results = []
    for name, body in WAYS.items():
        script = RUNNER.format(body="\n".join("    " + line for line in body.strip().splitlines()))
        done = subprocess.run([sys.executable, "-c", script, str(work / "store"),
                               str(work / "out")], capture_output=True, text=True, check=True)
        measured = json.loads(done.stdout.strip().splitlines()[-1])
        results.append({"way": name, **measured})
    base = results[0]
    print(f"{args.rows:,} x {args.dim} vectors ({data_mb:.0f} MB as float32)")
    print(f"{'way':<44} {'seconds':>8} {'rows/s':>10} {'peak MB':>8} {'peak vs baseline':>17}")
    for r in results:
        print(f"{r['way']:<44} {r['seconds']:>8.2f} {args.rows / r['seconds']:>10,.0f} "
              f"{r['peak_mb']:>8.0f} {r['peak_mb'] / base['peak_mb']:>16.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": args.rows, "dim": args.dim, "results": results},
                                   indent=2))


if __name__ == "__main__":
    main()
