"""faiss's OpenBLAS kernels: what bioindex picks (bioindex.blas) against what the bundled
OpenBLAS detects on its own, on the same machine in the same run.

    python benchmarks/blas_kernels.py                 # 200k x 512, IVF1024,SQ8
    python benchmarks/blas_kernels.py --n 100000

Each setting runs in its own process (OPENBLAS_CORETYPE is read when the library loads):
GFLOPS of a batched flat search (20,000 x 4,096 x 512), the build of an IVF1024,SQ8
(k-means training on 51,200 vectors, then adding all), and the p50 of single queries.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, time
import numpy as np
if sys.argv[1] == "bioindex":
    import bioindex  # noqa: F401  (chooses the kernels)
import faiss
from bioindex.synthetic import ClusteredVectors
n = int(sys.argv[2])
rng = np.random.default_rng(0)
x = rng.random((20000, 512), dtype=np.float32); y = rng.random((4096, 512), dtype=np.float32)
flat = faiss.IndexFlatIP(512); flat.add(y); flat.search(x[:100], 1)
started = time.perf_counter(); flat.search(x, 1)
gflops = 2 * 20000 * 4096 * 512 / (time.perf_counter() - started) / 1e9
g = ClusteredVectors(512, seed=0)
base = g.sample(n).astype(np.float32); queries = g.sample(300, part=1).astype(np.float32)
started = time.perf_counter()
index = faiss.index_factory(512, "IVF1024,SQ8", faiss.METRIC_INNER_PRODUCT)
index.train(base[:51200]); index.add(base)
build = time.perf_counter() - started
index.nprobe = 16
times = []
for q in queries:
    t = time.perf_counter()
    index.search(q[None], 10)
    times.append((time.perf_counter() - t) * 1000)
print(json.dumps({"kernels": __import__("os").environ.get("OPENBLAS_CORETYPE") or "detected",
                  "gflops": round(gflops, 1), "build_s": round(build, 2),
                  "p50_ms": round(float(np.percentile(times, 50)), 3)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/blas_kernels.json"))
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    rows = []
    for setting in ("detected", "bioindex"):
        done = subprocess.run([sys.executable, "-c", CHILD, setting, str(args.n)], env=env,
                              capture_output=True, text=True, check=True)  # fmt: skip
        rows.append({"setting": setting, **json.loads(done.stdout.strip().splitlines()[-1])})
    base = rows[0]
    print("setting | kernels | GFLOPS | IVF build s | single-query p50 ms | build vs detected")
    for row in rows:
        print(f"{row['setting']} | {row['kernels']} | {row['gflops']} | {row['build_s']} | "
              f"{row['p50_ms']} | {base['build_s'] / row['build_s']:.2f}x")
    args.out.write_text(json.dumps({"n": args.n, "results": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
