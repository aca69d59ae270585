"""Peak memory of importing a Darwin Core Archive of occurrence records (no media).

    python benchmarks/occurrences.py                    # 30,000,000 rows (a large GBIF export)
    python benchmarks/occurrences.py --rows 1000000 3000000

A folder archive (meta.xml + occurrence.txt, tab-separated, GBIF's column set for the
terms bioindex keeps) is generated once per size, then `bioindex index ARCHIVE` runs in its
own process; its peak RSS (ru_maxrss from wait4) and time are reported per size. Streaming
means the peak should not grow with the number of rows; the import's contract is 2 GB.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import peak_rss_of_index  # noqa: E402  (the same command, timed the same way)

TERMS = ("occurrenceID", "catalogNumber", "institutionCode", "basisOfRecord", "scientificName",
         "kingdom", "phylum", "class", "order", "family", "genus", "specificEpithet",
         "countryCode", "decimalLatitude", "decimalLongitude", "eventDate", "recordedBy",
         "license")  # fmt: skip
META = """<archive xmlns="http://rs.tdwg.org/dwc/text/" metadata="eml.xml">
  <core encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy=""
        ignoreHeaderLines="1" rowType="http://rs.tdwg.org/dwc/terms/Occurrence">
    <files><location>occurrence.txt</location></files>
    <id index="0" />
{fields}
  </core>
</archive>
"""
FAMILIES = [("Animalia", "Chordata", "Aves", "Passeriformes", "Cardinalidae", "Cardinalis",
             "cardinalis"), ("Plantae", "Tracheophyta", "Magnoliopsida", "Rosales",
             "Rosaceae", "Rosa", "canina"), ("Animalia", "Arthropoda", "Insecta",
             "Lepidoptera", "Nymphalidae", "Danaus", "plexippus")]  # fmt: skip


def make_archive(folder: Path, rows: int) -> None:
    if (folder / "done").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    fields = "\n".join(f'    <field index="{i + 1}" term="http://rs.tdwg.org/dwc/terms/{t}"/>'
                       for i, t in enumerate(TERMS))  # fmt: skip
    (folder / "meta.xml").write_text(META.format(fields=fields))
    with open(folder / "occurrence.txt", "w", buffering=1 << 22) as out:
        out.write("id\t" + "\t".join(TERMS) + "\n")
        for i in range(rows):
            k, p, c, o, f, g, e = FAMILIES[i % 3]
            out.write(f"{i}\turn:occ:{i}\tC-{i}\tMUS\tPreservedSpecimen\t{g} {e}\t{k}\t{p}\t{c}"
                      f"\t{o}\t{f}\t{g}\t{e}\tUS\t{(i % 180) - 90}.5\t{(i % 360) - 180}.25\t"
                      f"2020-01-{i % 28 + 1:02d}\tcollector {i % 1000}\tCC-BY-4.0\n")
    (folder / "done").write_text("")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[30_000_000])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/occurrences.json"))
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bioindex-occ-"))
    results = []
    for rows in args.rows:
        archive = workdir / f"archive-{rows}"
        started = time.perf_counter()
        make_archive(archive, rows)
        gib = (archive / "occurrence.txt").stat().st_size / 2**30
        print(f"{rows:>11} rows: archive of {gib:.2f} GiB ready "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
        store = workdir / f"store-{rows}"
        rss, seconds, line = peak_rss_of_index(archive, store)
        results.append({"rows": rows, "peak_rss_mb": round(rss, 1), "seconds": round(seconds, 1),
                        "rows_per_s": round(rows / seconds), "summary": line})  # fmt: skip
        print(f"{rows:>11} rows  peak RSS {rss:8.1f} MB  {seconds:8.1f} s  "
              f"{rows / seconds:9.0f} rows/s  {line}", flush=True)
    print()
    print("| rows | peak RSS MB | seconds | rows/s |")
    print("| ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['rows']:,} | {r['peak_rss_mb']} | {r['seconds']} | {r['rows_per_s']:,} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": results}, indent=2))


if __name__ == "__main__":
    main()
