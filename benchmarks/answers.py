"""classify's answers over a catalog of many species: how long turning a batch of images'
probabilities into top-k lists and decisions (summed up the ranks, backed off to the
deepest sure one) takes, this checkout against a baseline checkout in the same run.

    python benchmarks/answers.py --baseline /tmp/old-checkout          # 20k/600, 100k/3,000
    python benchmarks/answers.py --baseline /tmp/old --stores 100000:3000 --ranks species family

Stores are benchmarks/heads.py's (random 512-d vectors around one centre per species, three
species a genus, every image named to species), made once under --workdir. Each
measurement is a fresh process calling search.classify.classify_vectors on --queries stored
vectors, k 5: `few-shot` with the store's head (trained before the clock starts), and
`zero-shot` over the catalog's species with each species' mean vector as its label vector.
The neighbour vote's own cost is benchmarks/votes.py's. Prints a table (with whether both
checkouts gave the same answers), writes JSON (--out).
"""

from __future__ import annotations

import argparse
import time

from checkout import PEAK, against_baseline, measure, same_answers, save, versus_baseline
from heads import make_store

MEASURE = PEAK + r"""
import numpy as np
from bioindex.search.classify import classify_vectors
from bioindex.search.fewshot import fit_head, labelled_species, store_mean
from bioindex.search.labels import labels_from_taxa
from bioindex.store import Store
path, method, rank, queries = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
with Store.open(path, read_only=True) as store:
    ids, taxa = labelled_species(store)
    vectors = store.vectors([int(i) for i in ids]).astype(np.float32)
    options = {"method": method, "rank": rank, "k": 5}
    if method == "few-shot":
        options["head"] = fit_head("few-shot", vectors, taxa, store_mean(store))
    else:
        labels = labels_from_taxa(sorted(set(taxa), key=lambda t: t.lineage), "benchmark")
        row = {t.lineage: j for j, t in enumerate(labels.taxa)}
        classes = np.array([row[t.lineage] for t in taxa])
        means = np.zeros((len(labels.taxa), vectors.shape[1]), np.float32)
        np.add.at(means, classes, vectors)
        means /= np.linalg.norm(means, axis=1, keepdims=True)
        options.update(labels=labels, label_vectors=means, temperature=30.0)
    chosen = np.random.default_rng(0).choice(len(vectors), queries, replace=False)
    batch = vectors[chosen]
    classify_vectors(["warm"], batch[:1], **options)
    started = time.perf_counter()
    found = classify_vectors([str(i) for i in chosen], batch, **options)
    seconds = time.perf_counter() - started
answers = [[p.file, " ".join(p.taxon.lineage), round(p.score, 5), p.decision.name, p.decision.band]
           for p in found]
print(json.dumps({"seconds": seconds, "ms_per_image": 1000 * seconds / queries,
                  "answers": answers}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", nargs="+", default=["20000:600", "100000:3000"],
                        metavar="IMAGES:SPECIES")
    parser.add_argument("--methods", nargs="+", default=["few-shot", "zero-shot"],
                        choices=["few-shot", "zero-shot"])
    parser.add_argument("--ranks", nargs="+", default=["species"])
    parser.add_argument("--queries", type=int, default=500)
    args = against_baseline(parser, "answers")
    runs = args.runs
    results = []
    for spec in args.stores:
        images, species = (int(x) for x in spec.split(":"))
        store = make_store(args.workdir, images, species)
        for method in args.methods:
            for rank in args.ranks:
                answers = {}
                for name, code in runs:
                    started = time.perf_counter()
                    got = measure(MEASURE, [str(store), method, rank, str(args.queries)], code,
                                  args.timeout)  # fmt: skip
                    answers[name] = got.pop("answers", None)
                    results.append({"images": images, "species": species, "method": method,
                                    "rank": rank, "queries": args.queries, "code": name,
                                    **got})  # fmt: skip
                    print(f"  {species:,} species {method} {rank} {name}: {got} "
                          f"({time.perf_counter() - started:.0f} s)", flush=True)
                if len(answers) == 2:
                    results[-1]["same_answers"] = answers["this"] == answers["baseline"]
    print("\n| species | method | rank | queries | code | seconds | ms / image | vs baseline | "
          "same answers |")
    print("| ---: | --- | --- | ---: | --- | ---: | ---: | ---: | --- |")
    for r in results:
        seconds = f"{r['seconds']:.2f}" if "seconds" in r else r.get("error", "")[:40]
        per = f"{r['ms_per_image']:.2f}" if "ms_per_image" in r else ""
        ratio = versus_baseline(results, r, ("images", "method", "rank"))
        print(f"| {r['species']:,} | {r['method']} | {r['rank']} | {r['queries']} | "
              f"{r['code']} | {seconds} | {per} | {ratio} | {same_answers(r)} |")
    save(results, args.out)


if __name__ == "__main__":
    main()
