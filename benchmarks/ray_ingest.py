"""Local engine vs `--engine ray` on the same images: throughput and the driver's memory.

    python benchmarks/ray_ingest.py                       # 500 and 2,000 images, demo model
    python benchmarks/ray_ingest.py --sizes 1000 --px 1024 --num-gpus 1   # on a GPU machine

Each run indexes into a fresh store in its own process, which reports its own wall time,
images/s (from the run's summary) and peak RSS (ru_maxrss of that process alone; for Ray
that is the driver, not the Ray workers). With Ray the time includes starting a local Ray
runtime on this machine's cores, as a user's first command would.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import make_images  # noqa: E402

CHILD = """
import json, resource, sys, time
from bioindex import Collection
images, store, engine, gpus, device = sys.argv[1:6]
started = time.perf_counter()
with Collection.open(store, model="bioclip-demo", device=device, create=True) as c:
    s = c.index([images], progress=False, engine=engine, num_gpus=int(gpus))
print(json.dumps({"embedded": s.embedded, "failed": s.failed, "run_s": s.seconds,
                  "wall_s": time.perf_counter() - started,
                  "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(images: Path, store: Path, engine: str, gpus: int, device: str) -> dict:
    shutil.rmtree(store, ignore_errors=True)
    env = {**os.environ, "RAY_ADDRESS": ""}  # a private local runtime
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(images), str(store), engine, str(gpus), device],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"{engine} run failed:\n{result.stderr[-3000:]}")
    row = json.loads(result.stdout.strip().splitlines()[-1])
    row["images_per_s"] = round(row["embedded"] / row["run_s"], 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--px", type=int, default=256)
    parser.add_argument("--num-gpus", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ray_ingest.json"))
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bioindex-ray-"))
    device = "cuda" if args.num_gpus else "cpu"
    rows = []
    for size in sorted(args.sizes):
        images = workdir / f"images-{size}-{args.px}"
        make_images(images, size, args.px)
        for engine in ("local", "ray"):
            started = time.perf_counter()
            row = run(images, workdir / f"store-{engine}", engine, args.num_gpus, device)
            row.update(images=size, engine=engine, px=args.px,
                       command_s=round(time.perf_counter() - started, 1))  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print("images | engine | images/s (run) | run s | wall s | driver peak RSS MB")
    for r in rows:
        print(f"{r['images']} | {r['engine']} | {r['images_per_s']} | {r['run_s']:.1f} | "
              f"{r['wall_s']:.1f} | {r['driver_peak_rss_mb']:.0f}")  # fmt: skip
    for size in sorted(args.sizes):
        local, ray = (next(r for r in rows if r["images"] == size and r["engine"] == e)
                      for e in ("local", "ray"))  # fmt: skip
        print(
            f"{size} images: ray / local throughput = "
            f"{ray['images_per_s'] / local['images_per_s']:.2f}"
        )
    machine = {"cpus": os.cpu_count(), "python": platform.python_version()}
    report = {"rows": rows, "machine": machine}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
