"""What a CLI user waits for when nothing needs the model, next to a cold text search.

    python benchmarks/cold_paths.py                          # 300 images, demo model, 5 rounds
    python benchmarks/cold_paths.py --model ViT-B-16 --checkpoint random   # a BioCLIP-sized model

Each command runs as a fresh `bioindex` process (what a user at a shell gets), timed from
start to exit; medians over the rounds. The baseline, in the same run, is `search text` with
a text never asked before and no text tower kept (bioindex.text_tower; its cache pointed
where nothing can be written): it imports torch and open_clip, loads the model, encodes.
Compared with it: the same with the tower `index` kept (numpy alone encodes), `search text`
with a text asked before (its vector comes from the store's query cache), `search image`
without and with the kept image tower, and a rerun of `index` over the unchanged folder.
`classify` of one photo and of a specimen's three views (the images carry their demo species
as Darwin Core, so the catalog names 48 species; their label vectors are cached by a first
classify) compare with the same command with towers off (BIOINDEX_TOWERS=0): the model
loaded for its image tower and logit scale. Target: each at most 25% of its baseline.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import make_images  # noqa: E402

CLI = [sys.executable, "-m", "bioindex.cli"]


def timed(args: list[str], env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    subprocess.run([*CLI, *args], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, **(env or {})})  # fmt: skip
    return time.perf_counter() - started


def species_table(photos: Path, out: Path) -> Path:
    """A Darwin Core table giving each drawn image its demo species (make_images draws
    SPECIES[i % 48] as img{i:06d})."""
    from bioindex.demo.tree import SPECIES

    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "scientificName", "kingdom", "phylum", "class", "order",
                         "family", "genus", "specificEpithet"])  # fmt: skip
        for path in sorted(photos.rglob("img*.jpg")):
            t = SPECIES[int(path.stem[3:]) % len(SPECIES)].taxon
            writer.writerow([path.relative_to(photos), t.scientific_name, t.kingdom, t.phylum,
                             t.class_, t.order, t.family, t.genus, t.epithet])  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", default="bioclip-demo")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cold_paths.json"))
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bioindex-cold-"))
    photos, store = workdir / "photos", workdir / "store"
    make_images(photos, args.images, 128)
    metadata = species_table(photos, workdir / "species.csv")
    subprocess.run(["rm", "-rf", str(store), str(workdir / "cache")], check=True)
    os.environ["BIOINDEX_CACHE_DIR"] = str(workdir / "cache")  # the tower `index` keeps
    first = [*CLI, "index", str(photos), "-s", str(store), "--model", args.model,
             "--device", "cpu", "-q", "--metadata", str(metadata)]
    first += ["--checkpoint", args.checkpoint] if args.checkpoint else []
    subprocess.run(first, check=True, stdout=subprocess.DEVNULL)
    search = ["search", "text", "-s", str(store), "-k", "10", "--device", "cpu"]
    cold, towered = "new text, model loaded (no tower kept)", "new text, kept text tower"
    picture_cold = "search image, model loaded (no tower kept)"
    picture = "search image, kept image tower"
    classify_cold = "classify photo, model loaded (towers off)"
    classify = "classify photo, kept towers"
    views_cold = "classify --specimen 3 views, model loaded (towers off)"
    views = "classify --specimen 3 views, kept towers"
    times: dict[str, list[float]] = {cold: [], towered: [], "search text, asked before": [],
                                     picture_cold: [], picture: [],
                                     "index rerun, nothing changed": [],
                                     classify_cold: [], classify: [], views_cold: [],
                                     views: []}  # fmt: skip
    query = min(photos.rglob("*.jpg"))
    three = sorted(photos.rglob("*.jpg"))[:3]
    by_photo = ["classify", str(query), "-s", str(store), "--rank", "family", "--device", "cpu"]
    by_views = ["classify", "--specimen", *map(str, three), "-s", str(store), "--device", "cpu"]
    towers_off = {"BIOINDEX_TOWERS": "0"}
    timed(by_photo)  # the catalog's label vectors encoded once and cached, as for any user
    by_image = ["search", "image", str(query), "-s", str(store), "-k", "10", "--device", "cpu"]
    nowhere = {"BIOINDEX_CACHE_DIR": "/dev/null/no-cache"}  # mkdir fails: no tower kept
    for round_ in range(args.rounds):
        text = f"a photo of organism number {round_} on a white sheet"
        times[cold].append(timed([*search[:2], text, *search[2:]], nowhere))
        text = f"a photo of specimen number {round_} in a drawer"
        times[towered].append(timed([*search[:2], text, *search[2:]]))
        times["search text, asked before"].append(timed([*search[:2], text, *search[2:]]))
        times[picture_cold].append(timed(by_image, nowhere))
        times[picture].append(timed(by_image))
        times["index rerun, nothing changed"].append(
            timed(["index", str(photos), "-s", str(store), "-q"]))
        times[classify_cold].append(timed(by_photo, towers_off))
        times[classify].append(timed(by_photo))
        times[views_cold].append(timed(by_views, towers_off))
        times[views].append(timed(by_views))
    medians = {name: float(np.median(values)) for name, values in times.items()}
    print(f"{args.images} images, model {args.model}, {args.rounds} rounds, medians")
    print("| command | seconds | vs its baseline | target |")
    print("| --- | ---: | ---: | --- |")
    rows = []
    for name, seconds in medians.items():
        # A picture query against a picture query that loads the model.
        baseline = (picture_cold if name.startswith("search image")
                    else classify_cold if name.startswith("classify photo")
                    else views_cold if name.startswith("classify --specimen") else cold)
        ratio = seconds / medians[baseline]
        target = ("baseline" if name == baseline
                  else "met" if ratio <= 0.25 else "MISSED")
        print(f"| {name} | {seconds:.2f} | {ratio:.2f} | {target} |")
        rows.append({"command": name, "seconds": round(seconds, 3), "ratio": round(ratio, 3),
                     "all_seconds": [round(v, 3) for v in times[name]]})  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"images": args.images, "model": args.model,
                                    "checkpoint": args.checkpoint, "rounds": args.rounds,
                                    "rows": rows}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
