"""Naming a camera trap's photos from a names table (`index --names-table`): the scan-time
pass over every listed photo, against the same pass written plainly (each key's column
looked up per photo, each photo copied by dataclasses.replace) in the same run.

    python benchmarks/names_table.py                       # 100k and 1M photos, 100 names
    python benchmarks/names_table.py --sizes 200000

Photos are Items as a COCO Camera Traps listing makes them (five metadata keys each);
90 of the 100 common names are in the table. Prints a table, writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from bioindex.indexer.names_table import NamesTable
from bioindex.indexer.sources import _NAME_TERMS, Item, Scan, _name_from_table
from bioindex.store import dwc_column

NAMES = 100


def photos(count: int) -> dict[str, Item]:
    names = [f"animal {i}" for i in range(NAMES)]
    return {f"/trap/{i}.jpg": Item(f"/trap/{i}.jpg", f"/trap/{i}.jpg", 1, 1.0,
                                   {"vernacularName": names[i % NAMES], "eventDate": "2020-01-01",
                                    "locationID": "L1", "eventID": f"s{i // 3}",
                                    "frameNumber": i % 3})
            for i in range(count)}  # fmt: skip


def table() -> NamesTable:
    return NamesTable("names.csv", {f"animal {i}": {
        "scientificName": f"Genus{i} species", "genus": f"Genus{i}", "specificEpithet": "species",
        "taxonRank": "species"} for i in range(NAMES - 10)})  # fmt: skip


def plain_pass(items: dict[str, Item], names: NamesTable) -> None:
    """The baseline: the pass as first written."""
    for uri, item in items.items():
        common = next((str(v) for k, v in item.metadata.items()
                       if dwc_column(k) == "vernacular_name" and v not in (None, "")), None)
        if common is None or any(dwc_column(k) in _NAME_TERMS and v not in (None, "")
                                 for k, v in item.metadata.items()):  # fmt: skip
            continue
        terms = names.lookup(common)
        if terms is not None:
            items[uri] = replace(item, metadata={**item.metadata, **terms})


def timed(run, count: int) -> float:
    items = photos(count)
    started = time.perf_counter()
    run(items)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/names_table.json"))
    args = parser.parse_args()
    names = table()
    rows = []
    for count in args.sizes:
        base = timed(lambda items: plain_pass(items, names), count)
        ours = timed(lambda items: _name_from_table(items, Scan([], ["/trap/"]), names), count)
        rows.append({"photos": count, "baseline_s": round(base, 2), "bioindex_s": round(ours, 2),
                     "speedup": round(base / ours, 2)})  # fmt: skip
    print(f"\n{'photos':>10}  {'plain pass s':>12}  {'bioindex s':>10}  {'speed-up':>8}")
    for row in rows:
        print(f"{row['photos']:>10,}  {row['baseline_s']:>12.2f}  {row['bioindex_s']:>10.2f}  "
              f"{row['speedup']:>7.2f}×")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
