"""Few-shot heads on stores of many labelled images: time and peak memory of training
(search.fewshot.fit_head, what `classify --method few-shot` does on a store's first use),
against a baseline checkout in the same run.

    python benchmarks/heads.py                                 # 20k/600 and 100k/3,000
    python benchmarks/heads.py --baseline /tmp/old-checkout --stores 100000:3000

Stores hold random 512-d vectors around one centre per species (noise as large as the
centre), three species a genus, named to species; made once under --workdir. Each
measurement is a fresh process: seconds, and peak RSS above what it held with the
labelled vectors read. Prints a table, writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from checkout import PEAK, against_baseline, measure

MODEL = {"name": "random", "source": "benchmark", "weights_sha256": "0", "image_size": 224,
         "mean": [0.5] * 3, "std": [0.5] * 3, "preprocess": "eval"}  # fmt: skip
MEASURE = PEAK + r"""
from bioindex.errors import BioindexError
from bioindex.search.fewshot import fit_head, labelled_species, store_mean
from bioindex.store import Store
with Store.open(sys.argv[1], read_only=True) as store:
    ids, taxa = labelled_species(store)
    vectors, mean = store.vectors([int(i) for i in ids]), store_mean(store)
base = reset_peak()
started = time.perf_counter()
try:
    out = {"temperature": fit_head(sys.argv[2], vectors, taxa, mean).temperature}
except BioindexError as exc:
    out = {"refused": str(exc)}
out.update(seconds=time.perf_counter() - started, peak_mb=field("VmHWM") - base)
print(json.dumps(out))
"""


def word(i: int) -> str:
    return "".join("abcdefghijklmnopqrstuvwxyz"[(i // 26**k) % 26] for k in range(4))


def make_store(workdir: Path, images: int, species: int, dim: int = 512) -> Path:
    from bioindex.store import ImageRecord, Store

    path = workdir / f"labelled-{images}-{species}"
    if (path / "done").is_file():
        return path / "store"
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(species, dim)).astype(np.float32)
    with Store.create(path / "store", {**MODEL, "dim": dim}) as store:
        for start in range(0, images, 50_000):
            labels = rng.integers(0, species, min(50_000, images - start))
            vectors = centres[labels] + rng.normal(size=(len(labels), dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            store.commit([ImageRecord(f"/x/{start + i}.jpg", 1, 1.0, None, 1, 1,
                                      {"scientificName": f"G{word(s // 3)} {word(s)}"})
                          for i, s in enumerate(labels)], vectors)  # fmt: skip
    (path / "done").write_text("")
    return path / "store"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", nargs="+", default=["20000:600", "100000:3000"],
                        metavar="IMAGES:SPECIES")
    parser.add_argument("--methods", nargs="+", default=["few-shot", "linear-probe"])
    args = against_baseline(parser, "heads")
    runs = args.runs
    results = []
    for spec in args.stores:
        images, species = (int(x) for x in spec.split(":"))
        store = make_store(args.workdir, images, species)
        for method in args.methods:
            for name, code in runs:
                started = time.perf_counter()
                got = measure(MEASURE, [str(store), method], code, args.timeout)
                results.append({"images": images, "species": species, "method": method,
                                "code": name, **got})  # fmt: skip
                print(f"  {images:,}/{species:,} {method} {name}: {got} "
                      f"({time.perf_counter() - started:.0f} s)", flush=True)
    print("\n| images | species | method | code | seconds | peak MB | note |")
    print("| ---: | ---: | --- | --- | ---: | ---: | --- |")
    for r in results:
        note = r.get("error") or (r.get("refused", "")[:60] + "…" if "refused" in r else "")
        seconds = f"{r['seconds']:.1f}" if "seconds" in r else ""
        peak = f"{r['peak_mb']:.0f}" if "peak_mb" in r else ""
        print(f"| {r['images']:,} | {r['species']:,} | {r['method']} | {r['code']} | "
              f"{seconds} | {peak} | {note} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
