"""Decoding one photo by file format: what indexing a folder of JPEGs, PNGs, WebPs, TIFFs,
iPhone HEICs, AVIFs or JPEG 2000 masters costs before the model sees a pixel.

    python benchmarks/decode_formats.py                 # 4032 x 3024 (an iPhone's 12 MP)
    python benchmarks/decode_formats.py --size 1024 768

One real camera-trap photo (../shared/fixtures) scaled to the size and saved in each format
the installed Pillow (and pillow-heif) writes; each is then decoded by the index's own decode
stage (`indexer.embed.decode`: full decode, and --fast-decode), in turns, on one core. The
baseline is JPEG in the same run: compare the ratios. Prints a table, writes JSON (--out).
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "camera-trap"
FORMATS = {  # name: (Pillow format, save options)
    "JPEG q90": ("JPEG", {"quality": 90}),
    "PNG": ("PNG", {}),
    "WebP q90": ("WEBP", {"quality": 90}),
    "TIFF (LZW)": ("TIFF", {"compression": "tiff_lzw"}),
    "HEIC q80": ("HEIF", {"quality": 80}),
    "AVIF q60": ("AVIF", {"quality": 60}),
    # A herbarium's or an IIIF server's masters: lossless, and lossy at 20:1.
    "JPEG 2000": ("JPEG2000", {}),
    "JP2 20:1": ("JPEG2000", {"quality_mode": "rates", "quality_layers": [20],
                              "irreversible": True}),
}


def encoded(picture, kind: str, options: dict) -> bytes | None:
    out = io.BytesIO()
    try:
        picture.save(out, kind, **options)
    except (KeyError, OSError, ValueError):  # a format this Pillow cannot write
        return None
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=(4032, 3024))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path,
                        default=Path("benchmarks/results/decode_formats.json"))  # fmt: skip
    args = parser.parse_args()

    import pillow_heif
    from PIL import Image

    from bioindex.indexer.embed import decode

    pillow_heif.options.DECODE_THREADS = 1  # one core, as each decode worker has
    photo = Image.open(FIXTURE / "african_elephants.jpg").convert("RGB")
    picture = photo.resize(tuple(args.size), Image.BICUBIC)
    files = {name: data for name, (kind, options) in FORMATS.items()
             if (data := encoded(picture, kind, options)) is not None}  # fmt: skip
    times: dict[str, dict[str, list[float]]] = {n: {"full": [], "fast": []} for n in files}
    for _ in range(args.rounds):
        for name, data in files.items():  # in turns: a slow minute falls on every format
            for mode, fast in (("full", False), ("fast", True)):
                started = time.perf_counter()
                decode(data, 224, fast)
                times[name][mode].append((time.perf_counter() - started) * 1000)
    base = {mode: float(np.median(times["JPEG q90"][mode])) for mode in ("full", "fast")}
    rows = []
    for name, data in files.items():
        full = float(np.median(times[name]["full"]))
        fast = float(np.median(times[name]["fast"]))
        rows.append({"format": name, "kib": len(data) // 1024, "full_ms": round(full, 1),
                     "full_vs_jpeg": round(full / base["full"], 2), "fast_ms": round(fast, 1),
                     "fast_vs_jpeg": round(fast / base["fast"], 2)})  # fmt: skip
    print(f"{args.size[0]} x {args.size[1]}, median of {args.rounds} rounds, one core")
    print(f"{'format':<12} {'KiB':>6} {'decode ms':>10} {'vs JPEG':>8} "
          f"{'--fast-decode ms':>17} {'vs JPEG':>8}")  # fmt: skip
    for row in rows:
        print(f"{row['format']:<12} {row['kib']:>6} {row['full_ms']:>10} "
              f"{row['full_vs_jpeg']:>7}x {row['fast_ms']:>17} {row['fast_vs_jpeg']:>7}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"size": args.size, "rounds": args.rounds,
                                    "rows": rows}, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
