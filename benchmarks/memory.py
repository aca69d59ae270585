"""Peak memory of `bioindex index` as the collection grows (it should stay flat).

    python benchmarks/memory.py                     # 2,000 vs 20,000 images, demo model

Each size is indexed into a fresh store by its own CLI process; the peak RSS of that process
(ru_maxrss of the finished child) is reported. Images are small (96 px) so that the run is
about the pipeline's own memory, not about decoding big pictures.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_images(folder: Path, count: int, size: int) -> None:
    from bioindex.demo.draw import draw_organism
    from bioindex.demo.tree import SPECIES

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        path = folder / f"{i // 1000:03d}" / f"img{i:06d}.jpg"
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            draw_organism(SPECIES[i % len(SPECIES)], rng, size).save(path, quality=85)


def peak_rss_of_index(images: Path, store: Path) -> tuple[float, float, str]:
    """(peak RSS in MB, seconds, summary line) of one `bioindex index` process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "bioindex.cli", "index", str(images), "--store", str(store),
         "--model", "bioclip-demo", "--device", "cpu", "-q"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is a running maximum: run the sizes smallest first.
    return max(after, before) / 1024, seconds, result.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--px", type=int, default=96)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/memory.json"))
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bioindex-mem-"))
    rows = []
    for size in sorted(args.sizes):
        images = workdir / f"images-{size}"
        make_images(images, size, args.px)
        shutil.rmtree(workdir / f"store-{size}", ignore_errors=True)  # a fresh store each time
        rss, seconds, line = peak_rss_of_index(images, workdir / f"store-{size}")
        rows.append({"images": size, "peak_rss_mb": round(rss, 1), "seconds": round(seconds, 1),
                     "summary": line})  # fmt: skip
        print(f"{size:>8} images  peak RSS {rss:8.1f} MB  {seconds:6.1f} s  {line}", flush=True)
    growth = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
    print(f"\npeak RSS at {rows[-1]['images']} / at {rows[0]['images']} images: {growth:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": rows, "growth": growth}, indent=2))


if __name__ == "__main__":
    main()
