"""Text searches while four clients flood `bioindex serve` with huge PNG uploads.

    python benchmarks/upload_flood.py                     # 13000x13000 PNGs, 60 text queries

A 13000² PNG is ~0.5 MB on the wire and 507 MB once decoded: before uploads were refused
from their header above a pixel cap (default 50 MP) and decoded outside the server's lock,
four clients looping it pushed text-search latency from 0.01 s to 12-22 s. Phases, on one
server (its own process, 127.0.0.1): text searches alone (each a new text, so the model
runs), then the same number while four threads upload the PNG in a loop. Reported: text
p50/p99 of both phases, and what the uploads got back.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import build_store, start_server  # noqa: E402


def huge_png(side: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("L", (side, side), 255).save(out, "PNG", optimize=True)
    return out.getvalue()


def searches(client, count: int, tag: str) -> list[float]:
    times = []
    for i in range(count):
        started = time.perf_counter()
        response = client.get("/api/search/text", params={"q": f"a photo of {tag} {i}", "k": 10})
        response.raise_for_status()
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=13000)
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--uploaders", type=int, default=4)
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--out", type=Path,
                        default=Path("benchmarks/results/upload_flood.json"))  # fmt: skip
    args = parser.parse_args()
    import httpx

    store = args.store or build_store(Path(tempfile.mkdtemp(prefix="bioindex-flood-")))
    png = huge_png(args.side)
    server, base = start_server(store)
    uploads: list[tuple[int, float]] = []
    try:
        with httpx.Client(base_url=base, timeout=120) as client:
            alone = searches(client, args.queries, "quiet")
            stop = threading.Event()

            def flood() -> None:
                with httpx.Client(base_url=base, timeout=120) as own:
                    while not stop.is_set():
                        started = time.perf_counter()
                        r = own.post("/api/search/image",
                                     files={"file": ("huge.png", png, "image/png")})  # fmt: skip
                        uploads.append((r.status_code, time.perf_counter() - started))

            threads = [threading.Thread(target=flood) for _ in range(args.uploaders)]
            for thread in threads:
                thread.start()
            time.sleep(1.0)  # the flood is running
            during = searches(client, args.queries, "flooded")
            stop.set()
            for thread in threads:
                thread.join()
    finally:
        server.terminate()
        server.wait(timeout=30)

    def summary(times: list[float]) -> dict:
        return {"p50_ms": round(float(np.percentile(times, 50)) * 1000, 1),
                "p99_ms": round(float(np.percentile(times, 99)) * 1000, 1)}  # fmt: skip

    statuses: dict[int, int] = {}
    for status, _ in uploads:
        statuses[status] = statuses.get(status, 0) + 1
    upload_p50 = round(float(np.median([t for _, t in uploads])) * 1000, 1)
    report = {"png_bytes": len(png), "side": args.side, "queries": args.queries,
              "text_alone": summary(alone), "text_during_flood": summary(during),
              "uploads": len(uploads), "upload_statuses": statuses,
              "upload_p50_ms": upload_p50}  # fmt: skip
    print(f"{args.uploaders} clients uploading a {args.side}x{args.side} PNG "
          f"({len(png) // 1024} KB) while text searches run; {len(uploads)} uploads, "
          f"statuses {statuses}, upload p50 {report['upload_p50_ms']} ms\n")
    print("| phase | text p50 ms | text p99 ms |")
    print("| --- | ---: | ---: |")
    for name, key in (("text searches alone", "text_alone"),
                      ("during the upload flood", "text_during_flood")):  # fmt: skip
        print(f"| {name} | {report[key]['p50_ms']} | {report[key]['p99_ms']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
