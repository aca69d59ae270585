"""Near-duplicate groups (`bioindex dedup`): time and peak memory on stores of synthetic
vectors, against a baseline checkout in the same run.

    python benchmarks/dedup.py                          # 100k × 512, four cases
    python benchmarks/dedup.py --baseline /tmp/old-checkout --sizes 100000 200000

Cases: `spread` (the synthetic generator's default: few images within the threshold of
another), `bursts` (a camera trap's: events of five frames, ~0.97 apart), `blanks` (a
camera trap's empty frames: 30% of the images near-copies of a few backgrounds, the rest
spread) and `sequences` (a time-lapse camera's: 30% of the images in sequences of 20-250
near-copies, ~0.98 apart; its row also counts the sequences split over several groups or
partly in none, which an exact search keeps whole). Each store is made once under
--workdir and its index built once (auto, or --kind); each measurement is a fresh process (time, and
peak RSS above what the process held before dedup ran, from /proc/self/status),
optionally under a memory limit so that a baseline that would exhaust the machine stops
with "out of memory" instead. Prints a table, writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from checkout import PEAK, measure

CASES = ("spread", "bursts", "blanks", "sequences")
MODEL = {"name": "random", "source": "benchmark", "weights_sha256": "0", "image_size": 224,
         "mean": [0.5] * 3, "std": [0.5] * 3, "preprocess": "eval"}  # fmt: skip
BLANK_SHARE, BACKGROUNDS, BLANK_NOISE = 0.3, 8, 0.02
FRAMES, FRAME_NOISE = 5, 0.15
SEQUENCE_SHARE, SEQUENCE_SIZES, SEQUENCE_NOISE = 0.3, (20, 250), 0.15

MEASURE = PEAK + r"""
from bioindex.search.dedup import find_duplicates
from bioindex.store import Store
with Store.open(sys.argv[1], read_only=True) as store:
    store.index()  # loaded before the baseline of memory is taken
    base = reset_peak()
    started = time.perf_counter()
    members = find_duplicates(store, float(sys.argv[2]))
    seconds = time.perf_counter() - started
    kind = store.index_spec.kind
groups = len({m.group for m in members})
group_of = {m.uri.rsplit("/", 1)[1][:-4]: m.group for m in members}
print(json.dumps({"seconds": seconds, "peak_mb": field("VmHWM") - base, "groups": groups,
                  "members": len(members), "kind": kind,
                  "group_of": group_of if sys.argv[3] == "sequences" else None}))
"""


def vectors(case: str, n: int, dim: int, seed: int = 0) -> np.ndarray:
    """n unit vectors of `case` (see the module's docstring)."""
    from bioindex.synthetic import ClusteredVectors

    source = ClusteredVectors(dim, seed=seed)
    rng = np.random.default_rng([seed, 7])
    if case == "spread":
        return source.sample(n).astype(np.float32)
    if case == "sequences":
        return sequences(source, n, dim, rng)[0]
    if case == "bursts":
        centres = np.repeat(source.sample(-(-n // FRAMES)), FRAMES, axis=0)[:n]
        noise = rng.standard_normal(centres.shape, dtype=np.float32) * source.scale
        points = centres + FRAME_NOISE * (noise @ source.rotation)
    elif case == "blanks":
        blanks = int(n * BLANK_SHARE)
        backgrounds = source.sample(BACKGROUNDS, part=3)
        points = np.concatenate([
            backgrounds[rng.integers(0, BACKGROUNDS, blanks)]
            + BLANK_NOISE * rng.standard_normal((blanks, dim), dtype=np.float32) / np.sqrt(dim),
            source.sample(n - blanks)])  # fmt: skip
        points = points[rng.permutation(n)]
    else:
        raise SystemExit(f"unknown case {case!r}; one of {', '.join(CASES)}")
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def sequences(source, n: int, dim: int, rng: np.random.Generator,
              ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The sequences case's unit vectors, and each one's sequence (-1: in none)."""
    points = source.sample(n).astype(np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    sequence = np.full(n, -1)
    start, number = 0, 0
    while start < n * SEQUENCE_SHARE:
        size = int(rng.integers(*SEQUENCE_SIZES))
        noise = rng.standard_normal((size, dim), dtype=np.float32) / np.sqrt(dim)
        points[start : start + size] = points[start] + SEQUENCE_NOISE * noise[: n - start]
        sequence[start : start + size] = number
        start, number = start + size, number + 1
    order = rng.permutation(n)
    return points[order], sequence[order]


def split_sequences(group_of: dict[str, int], n: int, dim: int) -> tuple[int, int]:
    """Sequences of the sequences case in more than one group or partly in none, and how
    many sequences there are."""
    from bioindex.synthetic import ClusteredVectors

    _, sequence = sequences(ClusteredVectors(dim, seed=0), n, dim,
                            np.random.default_rng([0, 7]))  # fmt: skip
    split = 0
    for number in range(sequence.max() + 1):
        images = np.flatnonzero(sequence == number)
        split += len({group_of.get(str(i)) for i in images}) > 1
    return split, int(sequence.max() + 1)


def make_store(workdir: Path, case: str, n: int, dim: int, kind: str = "auto") -> Path:
    """The case's store with its index built, made once (a stamp says what it holds)."""
    from bioindex import faiss_index
    from bioindex.store import ImageRecord, Store

    path = workdir / (f"{case}-{n}-{dim}" + ("" if kind == "auto" else f"-{kind}"))
    stamp = {"case": case, "n": n, "dim": dim, "version": 1}
    if (path / "stamp.json").is_file() and json.loads((path / "stamp.json").read_text()) == stamp:
        return path / "store"
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    data = vectors(case, n, dim)
    started = time.perf_counter()
    with Store.create(path / "store", {**MODEL, "dim": dim}) as store:
        for start in range(0, n, 100_000):
            part = data[start : start + 100_000]
            store.commit([ImageRecord(f"/trap/{start + i}.jpg", 1, 1.0, None, 1, 1, {})
                          for i in range(len(part))], part)  # fmt: skip
        store.build_index(kind, faiss_index.parse_memory("4G"), 0.95, None)
        built = store.index_spec.kind
    print(f"  made {case} {n:,} × {dim} ({built}) in {time.perf_counter() - started:.0f} s",
          flush=True)  # fmt: skip
    (path / "stamp.json").write_text(json.dumps(stamp))
    return path / "store"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--kind", default="auto", choices=("auto", "flat", "hnsw", "ivf", "ivf-pq"),
                        help="the index kind the stores are built with (auto: measured)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="a checkout whose bioindex is measured beside this one")
    parser.add_argument("--memory-limit", type=float, default=12.0, metavar="GB",
                        help="address space each measured process may take")
    parser.add_argument("--timeout", type=float, default=1800.0, metavar="S")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bioindex-dedup"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/dedup.json"))
    args = parser.parse_args()
    runs = [("this", None)] + ([("baseline", args.baseline)] if args.baseline else [])
    results = []
    for n in args.sizes:
        for case in args.cases:
            store = make_store(args.workdir, case, n, args.dim, args.kind)
            for name, code in runs:
                got = measure(MEASURE, [str(store), str(args.threshold), case], code,
                              args.timeout, args.memory_limit)
                if got.get("group_of") is not None:
                    got["split"], got["sequences"] = split_sequences(
                        got["group_of"], n, args.dim)
                got.pop("group_of", None)
                results.append({"case": case, "n": n, "dim": args.dim, "code": name, **got})
                print(f"  {case} {n:,} {name}: {got}", flush=True)
    print(f"\nthreshold {args.threshold}, dim {args.dim}, memory limit {args.memory_limit} GB\n")
    print("| case | images | index | code | groups | in groups | split | seconds | peak MB "
          "| vs baseline |")
    print("| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for row in results:
        base = next((r for r in results if r["code"] == "baseline" and r["case"] == row["case"]
                     and r["n"] == row["n"]), None)  # fmt: skip
        ratio = ""
        if row["code"] == "this" and base and "error" not in base and "error" not in row:
            ratio = (f"time {base['seconds'] / row['seconds']:.2f}×, memory "
                     f"{base['peak_mb'] / max(row['peak_mb'], 1):.1f}× less")
        if "error" in row:
            print(f"| {row['case']} | {row['n']:,} | | {row['code']} | | | | | {row['error']} | |")
            continue
        split = f"{row['split']} of {row['sequences']}" if "split" in row else ""
        print(f"| {row['case']} | {row['n']:,} | {row.get('kind', '')} | {row['code']} | "
              f"{row['groups']:,} | {row['members']:,} | {split} | {row['seconds']:.1f} | "
              f"{row['peak_mb']:.0f} | {ratio} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threshold": args.threshold, "results": results}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
