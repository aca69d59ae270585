"""The neighbour vote (classify --method knn, and combined's vote) over many images: how long
a batch of query vectors takes, this checkout against a baseline checkout in the same run.

    python benchmarks/votes.py --baseline /tmp/old-checkout            # 100k and 300k, flat
    python benchmarks/votes.py --baseline /tmp/old --stores 300000:3000 --kinds flat ivf

Stores are benchmarks/heads.py's (random 512-d vectors around one centre per species, every
image named to species), made once under --workdir; `ivf` builds an IVF-SQ8 index on a copy
first. Each measurement is a fresh process calling search.classify.classify_vectors with
method knn on --queries stored vectors (k 1, 20 neighbours), the same call in both
checkouts. Prints a table, writes JSON (--out).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from checkout import PEAK, against_baseline, measure, same_answers, save, versus_baseline
from heads import make_store

MEASURE = PEAK + r"""
import numpy as np
from bioindex.search.classify import classify_vectors
from bioindex.store import Store
with Store.open(sys.argv[1], read_only=True) as store:
    store.index()
    rng = np.random.default_rng(0)
    live = np.sort(store.catalog.live_ids())  # the same ids in both checkouts' stores
    ids = sorted(int(i) for i in rng.choice(live, min(int(sys.argv[2]), len(live)),
                                            replace=False))
    vectors = store.vectors(ids).astype(np.float32)
    classify_vectors(["warm"], vectors[:1], method="knn", store=store, k=1)
    started = time.perf_counter()
    found = classify_vectors([str(i) for i in ids], vectors, method="knn", store=store, k=1)
    seconds = time.perf_counter() - started
answers = [p.taxon.scientific_name for p in found]
print(json.dumps({"seconds": seconds, "ms_per_image": 1000 * seconds / len(ids),
                  "answers": answers}))
"""


def indexed_copy(store: Path, kind: str) -> Path:
    """`store` as it is (flat: no index built), or a copy with an index of `kind` built."""
    if kind == "flat":
        return store
    copy = store.parent.parent / f"{store.parent.name}-{kind}" / "store"
    if not (copy.parent / "done").is_file():
        from bioindex.store import Store

        shutil.rmtree(copy.parent, ignore_errors=True)
        shutil.copytree(store, copy)
        with Store.open(copy) as opened:
            opened.build_index(kind=kind)
        (copy.parent / "done").write_text("")
    return copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", nargs="+", default=["100000:3000", "300000:3000"],
                        metavar="IMAGES:SPECIES")
    parser.add_argument("--kinds", nargs="+", default=["flat"], choices=["flat", "ivf"])
    parser.add_argument("--queries", type=int, default=512)
    args = against_baseline(parser, "votes")
    runs = args.runs
    results = []
    for spec in args.stores:
        images, species = (int(x) for x in spec.split(":"))
        for kind in args.kinds:
            store = indexed_copy(make_store(args.workdir, images, species), kind)
            answers = {}
            for name, code in runs:
                started = time.perf_counter()
                got = measure(MEASURE, [str(store), str(args.queries)], code, args.timeout)
                answers[name] = got.pop("answers", None)
                results.append({"images": images, "species": species, "index": kind,
                                "queries": args.queries, "code": name, **got})  # fmt: skip
                print(f"  {images:,} {kind} {name}: {got} "
                      f"({time.perf_counter() - started:.0f} s)", flush=True)
            if len(answers) == 2:
                results[-1]["same_answers"] = answers["this"] == answers["baseline"]
    print("\n| images | index | queries | code | seconds | ms / image | vs baseline | same "
          "answers |")
    print("| ---: | --- | ---: | --- | ---: | ---: | ---: | --- |")
    for r in results:
        seconds = f"{r['seconds']:.2f}" if "seconds" in r else r.get("error", "")[:40]
        per = f"{r['ms_per_image']:.1f}" if "ms_per_image" in r else ""
        ratio = versus_baseline(results, r, ("images", "index"))
        print(f"| {r['images']:,} | {r['index']} | {r['queries']} | {r['code']} | {seconds} | "
              f"{per} | {ratio} | {same_answers(r)} |")
    save(results, args.out)


if __name__ == "__main__":
    main()
