"""A bounded load test of `bioindex serve` on 127.0.0.1: throughput, latency, errors,
one request at a time against requests side by side, in the same run.

    python benchmarks/serve_load.py                      # demo model, 2,000 requests, 32 clients
    python benchmarks/serve_load.py --model ViT-B-16 --checkpoint random   # BioCLIP-sized
    python benchmarks/serve_load.py --model ViT-B-16 --checkpoint random --device cuda

Builds a demo store (or uses --store) with the model, then for each --workers setting
(default 1 and 8) starts the server as its own process on a free loopback port, on a fresh
copy of the store (no setting finds the texts another one cached), sends the same fixed
plan of mixed requests (text, taxon, uploaded-image searches, record lookups) from 32
client threads, stops it, and prints one table; JSON beside it.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import shutil
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


def build_store(workdir: Path, model: str = "bioclip-demo",
                checkpoint: str | None = None) -> Path:  # fmt: skip
    from bioindex import Collection
    from bioindex.demo.run import write_collection

    root = write_collection(workdir, per_species=6, seed=5)
    with Collection.open(root / "store", model=model, checkpoint=checkpoint, create=True,
                         device="cpu") as col:  # fmt: skip
        col.index([root / "images"], metadata=root / "occurrences.csv", progress=False)
    return root / "store"


def start_server(store: Path, workers: int | None = None, device: str = "cpu",
                 ) -> tuple[subprocess.Popen, str]:  # fmt: skip
    """`bioindex serve` on a free loopback port, as its own process, once it answers."""
    import httpx

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "bioindex.cli", "serve", "--store", str(store), "--port",
         str(port), "--device", device,
         *(["--workers", str(workers)] if workers else [])],  # fmt: skip
        # Not a pipe: the server logs a line per request, and an unread pipe stalls it.
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"bioindex serve --device {device} exited ({server.returncode}) "
                             "before answering")  # fmt: skip
        try:
            if httpx.get(f"{base}/api/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    return server, base


def run_load(store: Path, workers: int, plan: list[str], photos: list[bytes],
             concurrency: int, device: str = "cpu") -> dict:
    """One server setting under the plan: wall time, and (kind, seconds, status) rows."""
    import httpx

    from bioindex.demo.tree import SPECIES

    server, base = start_server(store, workers, device)
    chooser = random.Random(1)  # the same queries in the same order for every setting
    queries = [(kind, SPECIES[chooser.randrange(len(SPECIES))], chooser.randrange(8),
                chooser.randrange(1, 200)) for kind in plan]  # fmt: skip

    def one(query: tuple, client: httpx.Client) -> tuple[str, float, int]:
        kind, species, photo, record = query
        started = time.perf_counter()
        if kind == "text":
            r = client.get("/api/search/text", params={"q": species.taxon.caption(), "k": 10})
        elif kind == "taxon":
            r = client.get("/api/search/taxon", params={"name": species.taxon.family, "k": 10})
        elif kind == "image":
            r = client.post("/api/search/image", params={"k": 10},
                            files={"file": ("q.jpg", photos[photo], "image/jpeg")})  # fmt: skip
        else:
            r = client.get(f"/api/records/{record}")
        return kind, time.perf_counter() - started, r.status_code

    try:
        limits = httpx.Limits(max_connections=concurrency)
        with httpx.Client(base_url=base, timeout=120, limits=limits) as client:
            started = time.perf_counter()
            with ThreadPoolExecutor(concurrency) as pool:
                results = list(pool.map(lambda query: one(query, client), queries))
            wall = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {"wall": wall, "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 8],
                        help="server settings to compare; the first is the baseline")
    parser.add_argument("--model", default="bioclip-demo")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--build-only", type=Path, default=None, metavar="DIR",
                        help="only build the load test's store in DIR (for --store later)")
    parser.add_argument("--device", default="cpu", help="where the server runs its model")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serve_load.json"))
    args = parser.parse_args()

    from bioindex.demo.draw import draw_organism
    from bioindex.demo.tree import SPECIES

    if args.build_only:
        print(build_store(args.build_only, args.model, args.checkpoint))
        return
    workdir = Path(tempfile.mkdtemp(prefix="bioindex-load-"))
    store = args.store or build_store(workdir / "built", args.model, args.checkpoint)
    rng = np.random.default_rng(0)
    photos = []
    for species in SPECIES[:8]:
        buffer = io.BytesIO()
        draw_organism(species, rng).save(buffer, "JPEG")
        photos.append(buffer.getvalue())
    kinds = ["text", "taxon", "image", "record"]
    chooser = random.Random(0)
    plan = [chooser.choice(kinds) for _ in range(args.requests)]

    report = {"requests": len(plan), "concurrency": args.concurrency, "model": args.model,
              "device": args.device, "settings": []}  # fmt: skip
    for workers in args.workers:
        copy = workdir / f"store-{workers}"
        shutil.copytree(store, copy, ignore=shutil.ignore_patterns("query-cache"))
        run = run_load(copy, workers, plan, photos, args.concurrency, args.device)
        results, wall = run["results"], run["wall"]
        setting = {"workers": workers, "seconds": round(wall, 2),
                   "requests_per_s": round(len(results) / wall, 1),
                   "errors": sum(status >= 400 for _, _, status in results), "by_kind": {}}
        for kind in kinds + ["all"]:
            times = [t for k, t, _ in results if k == kind or kind == "all"]
            setting["by_kind"][kind] = {
                "count": len(times), "p50_ms": round(float(np.percentile(times, 50)) * 1000, 1),
                "p99_ms": round(float(np.percentile(times, 99)) * 1000, 1)}  # fmt: skip
        report["settings"].append(setting)

    base = report["settings"][0]["requests_per_s"]
    print(f"{len(plan)} requests from {args.concurrency} clients, model {args.model}"
          f"{' (' + args.checkpoint + ' weights)' if args.checkpoint else ''}\n")
    print(f"{'workers':>8}{'req/s':>9}{'vs first':>10}{'errors':>8}"
          + "".join(f"{k + ' p50/p99 ms':>24}" for k in kinds + ["all"]))
    for setting in report["settings"]:
        by_kind = setting["by_kind"]
        cells = "".join(f"{by_kind[k]['p50_ms']:>14.1f} / {by_kind[k]['p99_ms']:<7.1f}"
                        for k in kinds + ["all"])  # fmt: skip
        print(f"{setting['workers']:>8}{setting['requests_per_s']:>9.1f}"
              f"{setting['requests_per_s'] / base:>9.2f}x{setting['errors']:>8}{cells}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
