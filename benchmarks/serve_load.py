"""A bounded load test of `bioindex serve` on 127.0.0.1: latency percentiles and errors.

    python benchmarks/serve_load.py                      # 2,000 requests, 32 at a time

Builds a demo store (or uses --store), starts the server as its own process on a free
loopback port, sends a fixed number of mixed requests (text, taxon, uploaded-image searches,
record lookups) from a thread pool, stops the server, prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_store(workdir: Path) -> Path:
    from bioindex import Collection
    from bioindex.demo.run import write_collection

    root = write_collection(workdir, per_species=6, seed=5)
    with Collection.open(root / "store", model="bioclip-demo", create=True, device="cpu") as col:
        col.index([root / "images"], metadata=root / "occurrences.csv", progress=False)
    return root / "store"


def start_server(store: Path) -> tuple[subprocess.Popen, str]:
    """`bioindex serve` on a free loopback port, as its own process, once it answers."""
    import httpx

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "bioindex.cli", "serve", "--store", str(store), "--port",
         str(port), "--device", "cpu"],  # fmt: skip
        # Not a pipe: the server logs a line per request, and an unread pipe stalls it.
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/api/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    return server, base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serve_load.json"))
    args = parser.parse_args()

    import httpx

    from bioindex.demo.draw import draw_organism
    from bioindex.demo.tree import SPECIES

    store = args.store or build_store(Path(tempfile.mkdtemp(prefix="bioindex-load-")))
    server, base = start_server(store)
    try:
        rng = np.random.default_rng(0)
        photos = []
        for species in SPECIES[:8]:
            buffer = io.BytesIO()
            draw_organism(species, rng).save(buffer, "JPEG")
            photos.append(buffer.getvalue())
        chooser = random.Random(0)
        kinds = ["text", "taxon", "image", "record"]
        plan = [chooser.choice(kinds) for _ in range(args.requests)]

        def one(kind: str, client: httpx.Client) -> tuple[str, float, int]:
            started = time.perf_counter()
            species = SPECIES[chooser.randrange(len(SPECIES))]
            if kind == "text":
                r = client.get("/api/search/text", params={"q": species.taxon.caption(), "k": 10})
            elif kind == "taxon":
                r = client.get("/api/search/taxon", params={"name": species.taxon.family, "k": 10})
            elif kind == "image":
                r = client.post("/api/search/image", params={"k": 10},
                                files={"file": ("q.jpg", photos[chooser.randrange(8)],
                                                "image/jpeg")})  # fmt: skip
            else:
                r = client.get(f"/api/records/{chooser.randrange(1, 200)}")
            return kind, time.perf_counter() - started, r.status_code

        limits = httpx.Limits(max_connections=args.concurrency)
        with httpx.Client(base_url=base, timeout=60, limits=limits) as client:
            started = time.perf_counter()
            with ThreadPoolExecutor(args.concurrency) as pool:
                results = list(pool.map(lambda kind: one(kind, client), plan))
            wall = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=30)

    report = {"requests": len(results), "concurrency": args.concurrency,
              "seconds": round(wall, 2), "requests_per_s": round(len(results) / wall, 1),
              "errors": sum(status >= 400 for _, _, status in results), "by_kind": {}}  # fmt: skip
    print(
        f"{len(results)} requests, {args.concurrency} concurrent, {wall:.1f} s, "
        f"{len(results) / wall:.1f} req/s, errors {report['errors']}\n"
    )
    print(f"{'kind':<8}{'count':>7}{'p50 ms':>10}{'p99 ms':>10}")
    for kind in kinds + ["all"]:
        times = [t for k, t, _ in results if k == kind or kind == "all"]
        p50, p99 = np.percentile(times, 50) * 1000, np.percentile(times, 99) * 1000
        report["by_kind"][kind] = {"count": len(times), "p50_ms": round(p50, 1),
                                   "p99_ms": round(p99, 1)}  # fmt: skip
        print(f"{kind:<8}{len(times):>7}{p50:>10.1f}{p99:>10.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
