"""A store of common names only (a camera trap's, a LILA dataset's) against the same images
named to species: top-1, calibration and "unknown" for each classify method, on the demo
world under a collection look, with 20% of the species' names left out of the labels; and
the common-name store with a camera trap's empty frames labelled so (learnt as "blank").

    python benchmarks/common_names.py                     # slide-film, 5 labelled, 6 queries
    python benchmarks/common_names.py --look yellow-light --shots 1

Both stores hold the same pictures (bioindex.demo.world, demo model); one's metadata names
each picture's species (with its common name), the other's only its common name. Queries
come from a seed the stores never saw. Prints a table, writes JSON (--out).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bioindex import Collection
from bioindex.demo.draw import draw_empty_frame
from bioindex.demo.identify import QUERY_SEED, STORE_SEED, query_vectors
from bioindex.demo.tree import SPECIES
from bioindex.demo.world import LOOKS, apply_look, held_out_species, write_world
from bioindex.search.calibration import expected_calibration_error

METHODS = ("zero-shot", "knn", "combined", "few-shot", "linear-probe")


EMPTY_FRAMES = 96  # labelled empty frames in the store with blanks (two per species)
EMPTY_QUERIES = 48


def empty_frames(folder: Path, count: int, seed: int, look: str) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"empty-{seed}-{i:04d}.png" for i in range(count)]
    for path in paths:
        apply_look(draw_empty_frame(rng), look).save(path)
    return paths


def build(folder: Path, look: str, shots: int) -> dict[str, Collection]:
    """The stores over one world; the held-out species' pictures are indexed unnamed."""
    root = write_world(folder / "world", SPECIES, shots, STORE_SEED, look)
    empty = empty_frames(root / "images", EMPTY_FRAMES, STORE_SEED, look)
    held = {s.taxon.scientific_name for s in held_out_species(0.2)}
    rows = list(csv.DictReader(open(root / "occurrences.csv")))
    species, common = [list(rows[0])], [["file", "vernacularName"]]
    blanks = [["file", "vernacularName", "observationType"]]
    for row in rows:
        named = row["scientificName"] not in held
        species.append([row[c] if named or c == "file" else "" for c in rows[0]])
        common.append([row["file"], row["vernacularName"] if named else ""])
        blanks.append([*common[-1], ""])
    blanks += [[path.name, "", "empty"] for path in empty]
    stores = {}
    for kind, table in (("species", species), ("common names", common),
                        ("common names + empty frames", blanks)):  # fmt: skip
        with open(folder / f"{kind}.csv", "w", newline="") as handle:
            csv.writer(handle).writerows(table)
        stores[kind] = Collection.open(folder / kind, model="bioclip-demo", create=True,
                                       device="cpu")  # fmt: skip
        listed = [root / "images" / row[0] for row in table[1:]]  # not the other stores' frames
        stores[kind].index(listed, metadata=folder / f"{kind}.csv", progress=False)
    return stores


def measure_blanks(collection: Collection, method: str, vectors: np.ndarray,
                   names: list[str], held: np.ndarray, empty: np.ndarray
                   ) -> dict[str, float]:  # fmt: skip
    """How a store that knows its empty frames sorts new frames: empty ones called blank,
    animals (of labelled names) called blank, and the animals' top-1."""
    files = [str(i) for i in range(len(vectors))]
    rows = collection.classify_vectors(files, vectors, method=method, k=1)
    label = np.array([p.label for p in rows])
    animal = ~empty
    animal[: len(held)] &= ~held
    return {"empty_called_blank": float((label[empty] == "blank").mean()),
            "animals_called_blank": float((label[animal] == "blank").mean()),
            "top1_known_animals": float(np.mean([a == b for a, b in
                                                 zip(label[: len(names)][~held],
                                                     np.array(names)[~held])]))}  # fmt: skip


def measure(collection: Collection, method: str, vectors: np.ndarray, names: list[str],
            held: np.ndarray) -> dict[str, float]:  # fmt: skip
    """Top-1 and ECE over the known names' queries, and how often each group is answered
    at the asked rank (a species, or a common name)."""
    files = [str(i) for i in range(len(names))]
    collection.classify_vectors(files[:1], vectors[:1], method=method)  # trains a head once
    started = time.perf_counter()
    rows = collection.classify_vectors(files, vectors, method=method, k=len(SPECIES))
    seconds = time.perf_counter() - started
    label = [p.label or (p.taxon.common_name if p.taxon else "") for p in rows]
    columns = sorted(set(label))
    scores = np.zeros((len(names), len(columns)))
    decided: dict[int, Any] = {}
    for p, name in zip(rows, label):
        scores[int(p.file), columns.index(name)] = p.score
        decided.setdefault(int(p.file), p.decision)
    known = ~held
    truth = np.array([columns.index(n) if n in columns else 0 for n in names])
    top = scores.argmax(axis=1)
    at_rank = np.array([decided[i].band == "confident" for i in range(len(names))])
    return {
        "top1_known": float((top == truth)[known].mean()),
        "ece_known": expected_calibration_error(scores[known], truth[known]),
        "known_answered": float(at_rank[known].mean()),
        "held_out_unknown": float((~at_rank[held]).mean()),
        "ms_per_query": 1000 * seconds / len(names),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--look", choices=LOOKS, default="slide-film")
    parser.add_argument("--shots", type=int, default=5, help="labelled pictures per species")
    parser.add_argument("--queries", type=int, default=6, help="queries per species")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/common_names.json"))
    args = parser.parse_args()
    started = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="bioindex-common-"))
    try:
        stores = build(folder, args.look, args.shots)
        vectors, truth = query_vectors(stores["species"], args.queries, args.look)
        names = [s.taxon.common_name for s in truth]
        held_names = {s.taxon.common_name for s in held_out_species(0.2)}
        held = np.array([n in held_names for n in names])
        results: dict[str, Any] = {"look": args.look, "shots": args.shots,
                                   "queries_per_species": args.queries}  # fmt: skip
        blank = stores.pop("common names + empty frames")
        for kind, collection in stores.items():
            results[kind] = {m: measure(collection, m, vectors, names, held) for m in METHODS}
            collection.close()
        from PIL import Image

        frames = empty_frames(folder / "queries", EMPTY_QUERIES, QUERY_SEED, args.look)
        both = np.concatenate([vectors, blank.model.embed_pil([Image.open(f) for f in frames])])
        empty = np.arange(len(both)) >= len(vectors)
        results["empty frames"] = {m: measure_blanks(blank, m, both, names, held, empty)
                                   for m in ("knn", "few-shot", "linear-probe")}  # fmt: skip
        blank.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    results["seconds"] = round(time.perf_counter() - started, 1)
    print(f"\ndemo world, look {args.look}, {args.shots} labelled and {args.queries} query "
          f"pictures per species, 20% of species unnamed in the store\n")
    header = ("labels", "method", "top-1 known", "ECE known", "known answered",
              "held-out unknown", "ms/query")  # fmt: skip
    print("  ".join(f"{h:<16}" for h in header))
    for kind in ("species", "common names"):
        for method, found in results[kind].items():
            print("  ".join(f"{v:<16}" for v in (
                kind, method, f"{found['top1_known']:.1%}", f"{found['ece_known']:.3f}",
                f"{found['known_answered']:.1%}", f"{found['held_out_unknown']:.1%}",
                f"{found['ms_per_query']:.2f}")))  # fmt: skip
    print(f"\nwith {EMPTY_FRAMES} labelled empty frames in the common-name store; "
          f"{EMPTY_QUERIES} new empty frames among the queries\n")
    header = ("method", "empty → blank", "animal → blank", "top-1 known animals")
    print("  ".join(f"{h:<20}" for h in header))
    for method, found in results["empty frames"].items():
        print("  ".join(f"{v:<20}" for v in (
            method, f"{found['empty_called_blank']:.1%}", f"{found['animals_called_blank']:.1%}",
            f"{found['top1_known_animals']:.1%}")))  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\n{results['seconds']} s; wrote {args.out}")


if __name__ == "__main__":
    main()
