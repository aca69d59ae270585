"""How long `bioindex index` takes to list what a large camera-trap dataset's file names, before
any photo is read: a COCO Camera Traps JSON (LILA's format) and a CSV manifest of N photos
spread over a few hundred folders, as `scan_paths` reads them (the photos need not exist:
listing is what is measured).

    python benchmarks/listing.py --sizes 1000000 --baseline /tmp/base-checkout

Each measurement runs in a fresh process (benchmarks/checkout.py), this checkout's code and,
with --baseline, another checkout's in the same run. Prints a table, writes JSON (--out).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from checkout import PEAK, measure

MEASURE = PEAK + r"""
from pathlib import Path
from bioindex.indexer.sources import scan_paths
reset_peak()
started = time.perf_counter()
scan = scan_paths([Path(sys.argv[1])])
print(json.dumps({"items": len(scan.items), "seconds": round(time.perf_counter() - started, 2),
                  "peak_mb": round(field("VmHWM"), 1)}))
"""


def _path(i: int) -> str:
    return f"S{i % 11}/B{i % 23:02d}/R{i % 3}/img{i:08d}.JPG"  # ~760 folders, as a season's


def write_coco(folder: Path, n: int) -> Path:
    path = folder / f"cct-{n}.json"
    if not path.exists():
        images = [{"id": f"i{i}", "file_name": _path(i), "datetime": "2013-10-10 10:15:33",
                   "location": f"L{i % 200}", "seq_id": f"s{i // 3}", "frame_num": i % 3 + 1,
                   "seq_num_frames": 3} for i in range(n)]  # fmt: skip
        notes = [{"id": f"a{i}", "image_id": f"i{i}", "category_id": i % 50} for i in range(n)]
        categories = [{"id": c, "name": f"species {c}" if c else "empty"} for c in range(50)]
        path.write_text(json.dumps({"info": {"version": "1"}, "images": images,
                                    "categories": categories, "annotations": notes}))
    return path


def write_manifest(folder: Path, n: int) -> Path:
    path = folder / f"manifest-{n}.csv"
    if not path.exists():
        with open(path, "w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["path", "eventDate", "locationID", "vernacularName"])
            for i in range(n):
                writer.writerow([_path(i), "2013-10-10T10:15:33", f"L{i % 200}",
                                 f"species {i % 50}"])  # fmt: skip
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bioindex-listing"))
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/listing.json"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.sizes:
        for kind, write in (("coco json", write_coco), ("csv manifest", write_manifest)):
            source = write(args.workdir, n)
            for code, name in ((None, "this"), (args.baseline, "baseline")):
                if name == "baseline" and code is None:
                    continue
                got = measure(MEASURE, [str(source)], code, args.timeout)
                rows.append({"source": kind, "photos": n, "code": name,
                             "file_mb": round(source.stat().st_size / 2**20, 1), **got})
    print("| source | photos | file MB | code | seconds | peak MB | vs baseline |")
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: |")
    for row in rows:
        base = next((r for r in rows if r["code"] == "baseline" and r["source"] == row["source"]
                     and r["photos"] == row["photos"] and "seconds" in r), None)  # fmt: skip
        ratio = (f"{base['seconds'] / row['seconds']:.2f}× faster"
                 if base and row["code"] == "this" and "seconds" in row else "")  # fmt: skip
        print(f"| {row['source']} | {row['photos']:,} | {row['file_mb']} | {row['code']} | "
              f"{row.get('seconds', row.get('error'))} | {row.get('peak_mb', '')} | {ratio} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
