"""Peak memory of `bioindex index` as the collection grows (it should stay flat).

    python benchmarks/memory.py                     # 2,000 vs 20,000 images, demo model

Each size is indexed into a fresh store by its own CLI process, `--rounds` times in turn; the
peak RSS of that process (its ru_maxrss from wait4) is reported, median of the rounds. Images
are small (96 px) so that the run is about the pipeline's own memory, not about decoding big
pictures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
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
    """(peak RSS in MB, seconds, summary line) of one `bioindex index` into a fresh store."""
    shutil.rmtree(store, ignore_errors=True)
    with tempfile.TemporaryFile("w+") as output:
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "bioindex.cli", "index", str(images), "--store", str(store),
             "--model", "bioclip-demo", "--device", "cpu", "-q"],
            stdout=output, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        # wait4 gives this command's own peak (its waited-for decode workers included).
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        output.seek(0)
        text = output.read().strip()
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"bioindex index failed:\n{text[-3000:]}")
    return usage.ru_maxrss / 1024, seconds, text.splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--px", type=int, default=96)
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="index every size this many times, in turn; report the median peak",
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/memory.json"))
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bioindex-mem-"))
    sizes = sorted(args.sizes)
    for size in sizes:
        make_images(workdir / f"images-{size}", size, args.px)
    # A peak is one moment's allocations, and they vary from run to run by tens of MB:
    # the sizes take turns and each is reported by its median round.
    runs: dict[int, list[dict]] = {size: [] for size in sizes}
    for _ in range(args.rounds):
        for size in sizes:
            rss, seconds, line = peak_rss_of_index(workdir / f"images-{size}",
                                                   workdir / f"store-{size}")  # fmt: skip
            runs[size].append({"peak_rss_mb": round(rss, 1), "seconds": round(seconds, 1),
                               "summary": line})  # fmt: skip
            print(f"{size:>8} images  peak RSS {rss:8.1f} MB  {seconds:6.1f} s  {line}",
                  flush=True)  # fmt: skip
    rows = [{"images": size,
             "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs[size]),
             "rounds": runs[size]} for size in sizes]  # fmt: skip
    growth = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
    print()
    for row in rows:
        print(f"{row['images']:>8} images  median peak RSS {row['peak_rss_mb']:8.1f} MB")
    print(f"peak RSS at {rows[-1]['images']} / at {rows[0]['images']} images: {growth:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": rows, "growth": growth}, indent=2))


if __name__ == "__main__":
    main()
