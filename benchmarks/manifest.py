"""Peak memory of importing a large manifest: 100,000 rows over a few hundred real files.

    python benchmarks/manifest.py                  # 100k rows, 300 distinct JPEGs, demo model

Each row names its own hard link to one of the files (distinct paths, so distinct images for
the catalog, without writing 100k pictures) and carries Darwin Core columns. One `bioindex
index` process imports it; its peak RSS is reported next to a 10k-row run for scale.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def build(workdir: Path, rows: int, files: int) -> Path:
    from bioindex.demo.draw import draw_organism
    from bioindex.demo.tree import SPECIES

    originals = workdir / "originals"
    links = workdir / f"links-{rows}"
    originals.mkdir(parents=True, exist_ok=True)
    links.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(files):
        path = originals / f"o{i:04d}.jpg"
        if not path.exists():
            draw_organism(SPECIES[i % len(SPECIES)], rng, 96).save(path, quality=85)
    manifest = workdir / f"manifest-{rows}.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "catalogNumber", "scientificName", "institutionCode",
                         "countryCode", "eventDate"])  # fmt: skip
        for i in range(rows):
            link = links / f"{i // 1000:03d}" / f"r{i:06d}.jpg"
            if not link.exists():
                link.parent.mkdir(exist_ok=True)
                os.link(originals / f"o{i % files:04d}.jpg", link)
            species = SPECIES[i % files % len(SPECIES)]
            writer.writerow([str(link), f"M-{i:06d}", species.name, "SYNTH", "KE",
                             f"{2000 + i % 25}-01-01"])  # fmt: skip
    return manifest


def run(manifest: Path, store: Path) -> tuple[float, float, str]:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "bioindex.cli", "index", str(manifest), "--store", str(store),
         "--model", "bioclip-demo", "--device", "cpu", "-q"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return peak, seconds, result.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/manifest.json"))
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bioindex-manifest-"))
    results = []
    for rows in sorted(args.rows):  # ru_maxrss of children only grows: smallest first
        manifest = build(workdir, rows, args.files)
        shutil.rmtree(workdir / f"store-{rows}", ignore_errors=True)  # a fresh store each time
        peak, seconds, line = run(manifest, workdir / f"store-{rows}")
        results.append({"rows": rows, "peak_rss_mb": round(peak, 1), "seconds": round(seconds, 1),
                        "summary": line})  # fmt: skip
        print(f"{rows:>8} rows  peak RSS {peak:8.1f} MB  {seconds:7.1f} s  {line}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
