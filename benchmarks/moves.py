"""A folder of photos indexed, moved, and indexed again at its new path: how long the second
run takes and what the store holds after it, this checkout against a baseline checkout in
the same run (before indexer/moves.py every photo was embedded again and stored twice).

    python benchmarks/moves.py --baseline /tmp/old-checkout            # 2,000 photos, demo
    python benchmarks/moves.py --baseline /tmp/old --photos 10000

The photos are random shapes on random backgrounds (JPEG, 160-320 px), made once under
--workdir; each measurement is a fresh process running `bioindex index` twice (the folder,
then the folder renamed) through the Python API with the demo model. Prints a table,
writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
from checkout import PEAK, measure

MEASURE = PEAK + r"""
import shutil, time
from pathlib import Path
from bioindex import Collection
work = Path(sys.argv[1])
photos, moved, store = work / "photos", work / "moved", work / "store"
started = time.perf_counter()
with Collection.open(store, model="demo", create=True, device="cpu") as col:
    first = col.index([photos], progress=False)
first_s = time.perf_counter() - started
photos.rename(moved)
started = time.perf_counter()
with Collection.open(store, device="cpu") as col:
    again = col.index([moved], progress=False)
    live = col.store.live_count()
again_s = time.perf_counter() - started
print(json.dumps({"first_s": first_s, "again_s": again_s, "embedded_again": again.embedded,
                  "moved": getattr(again, "moved", 0), "live_after": live,
                  "embedded_first": first.embedded}))
"""


def make_photos(folder: Path, count: int) -> None:
    """`count` distinct JPEGs (made once)."""
    from PIL import Image, ImageDraw

    if (folder.parent / f"done-{count}").is_file():
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        w, h = (int(x) for x in rng.integers(160, 320, 2))
        image = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x, y = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
            draw.ellipse((x, y, x + int(rng.integers(10, w)), y + int(rng.integers(10, h))),
                         tuple(int(v) for v in rng.integers(0, 256, 3)))  # fmt: skip
        sub = folder / f"card{i % 8}"
        sub.mkdir(exist_ok=True)
        image.save(sub / f"IMG_{i:05d}.jpg", quality=90)
    (folder.parent / f"done-{count}").write_text("")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=2000)
    parser.add_argument("--baseline", type=Path, default=None)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bioindex-moves"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/moves.json"))
    args = parser.parse_args()
    source = args.workdir / "source" / "photos"
    make_photos(source, args.photos)
    runs = [("this", None)] + ([("baseline", args.baseline)] if args.baseline else [])
    results = []
    for name, code in runs:
        work = args.workdir / name
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        shutil.copytree(source, work / "photos")
        started = time.perf_counter()
        got = measure(MEASURE, [str(work)], code, args.timeout)
        results.append({"code": name, "photos": args.photos, **got})
        print(f"  {name}: {got} ({time.perf_counter() - started:.0f} s)", flush=True)
    print("\n| code | photos | first index s | after the move s | embedded again | moved | "
          "live images after |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        if "error" in r:
            print(f"| {r['code']} | {r['photos']:,} | {r['error'][:60]} | | | | |")
            continue
        print(f"| {r['code']} | {r['photos']:,} | {r['first_s']:.1f} | {r['again_s']:.1f} | "
              f"{r['embedded_again']:,} | {r['moved']:,} | {r['live_after']:,} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
