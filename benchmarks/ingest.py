"""Ingest throughput: decode-only, model-only and end-to-end images/s, against pybioclip.

    python benchmarks/ingest.py                          # CPU, demo model, 1000 × 1024 px
    python benchmarks/ingest.py --images 200 --size 224  # a TreeOfLife-like shard size
    python benchmarks/ingest.py --model ViT-B-16 --checkpoint random --device cuda

Prints a table and writes JSON (--out). Every figure comes from the same run on the same
images, so the ratios are the numbers to compare across machines. The pybioclip baseline is
its own `bioclip embed` command with the same weights (skipped when pybioclip is absent or
the model is not a local-dir).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_images(folder: Path, count: int, size: int, seed: int = 0) -> list[Path]:
    """Photo-like JPEGs: demo organisms drawn at `size` px with sensor-like noise."""
    from bioindex.demo.draw import draw_organism
    from bioindex.demo.tree import SPECIES

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"img{i:06d}.jpg"
        if not path.exists():
            draw_organism(SPECIES[i % len(SPECIES)], rng, size).save(path, quality=90)
        paths.append(path)
    return paths


def decode_only(paths: list[Path], model, workers: int, batch_size: int, fast: bool) -> float:
    """The product's own decode stage (read, decode, resize, batch), run without the model."""
    from bioindex.indexer.embed import batch_loader
    from bioindex.indexer.sources import Item

    items = [Item(str(p), str(p), p.stat().st_size, p.stat().st_mtime) for p in paths]
    started = time.perf_counter()
    count = sum(len(batch["position"]) for batch in batch_loader(items, model, batch_size,
                                                                 workers, fast))  # fmt: skip
    return count / (time.perf_counter() - started)


def model_only(model, count: int, batch_size: int) -> float:
    import torch

    size = model.identity.image_size
    batch = torch.randn(batch_size, 3, size, size)
    if model.device == "cuda":
        batch = batch.pin_memory()
    model.encode_images(batch)  # warm-up (cuDNN autotune, lazy init)
    if model.device == "cuda":
        torch.cuda.synchronize()
    done = 0
    started = time.perf_counter()
    while done < count:
        model.encode_images(batch)
        done += batch_size
    return done / (time.perf_counter() - started)


def end_to_end(paths: list[Path], args: argparse.Namespace, store: Path) -> tuple[float, float]:
    # ru_maxrss of RUSAGE_CHILDREN afterwards is the peak RSS of the largest child (the CLI).
    """(images/s inside the run, images/s of the whole CLI command incl. start-up)."""
    shutil.rmtree(store, ignore_errors=True)
    command = [sys.executable, "-m", "bioindex.cli", "index", str(paths[0].parent), "--store",
               str(store), "--model", args.model, "--device", args.device, "-q"]  # fmt: skip
    if args.checkpoint:
        command += ["--checkpoint", args.checkpoint]
    if args.batch_size:
        command += ["--batch-size", str(args.batch_size)]
    if args.workers is not None:
        command += ["--workers", str(args.workers)]
    if args.fast_decode:
        command += ["--fast-decode"]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    inner = float(result.stdout.rsplit("(", 1)[1].split()[0])
    return inner, len(paths) / wall


def pybioclip(paths: list[Path], args: argparse.Namespace, out: Path) -> float | None:
    executable = shutil.which("bioclip")
    if executable is None or not args.model.startswith("local-dir:"):
        return None
    command = [executable, "embed", "--model", args.model, "--device", args.device,
               "--batch-size", str(args.batch_size or 32), "--output", str(out),
               *map(str, paths)]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, capture_output=True, text=True, check=True)
    return len(paths) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--model", default="bioclip-demo")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--fast-decode", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ingest.json"))
    args = parser.parse_args()

    from bioindex.indexer.embed import default_batch_size, default_workers
    from bioindex.models import load_model, resolve_name

    if args.model in ("bioclip-demo", "demo"):
        args.model = resolve_name(args.model)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bioindex-bench-"))
    paths = make_images(workdir / f"images-{args.size}", args.images, args.size)
    model = load_model(args.model, checkpoint=args.checkpoint, device=args.device)
    batch_size = args.batch_size or default_batch_size(model.device)
    workers = default_workers(model.device) if args.workers is None else args.workers

    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   + (_gpu_name() if model.device == "cuda" else "no GPU used"),
        "model": args.model, "device": model.device, "images": len(paths),
        "image_px": args.size, "batch_size": batch_size, "workers": workers,
    }  # fmt: skip
    results["fast_decode"] = args.fast_decode
    # Capacity of decoding on all cores, as the limit L is defined (docs/benchmarks.md).
    all_cores = os.cpu_count() or 1
    results["decode_only"] = decode_only(paths, model, all_cores, batch_size, args.fast_decode)
    results["model_only"] = model_only(model, max(batch_size * 4, min(len(paths), 1024)),
                                       batch_size)  # fmt: skip
    del model
    inner, wall = end_to_end(paths, args, workdir / "store")
    results["bioindex_run"] = inner
    results["bioindex_cli"] = wall
    results["bioindex_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    decode, model_rate = results["decode_only"], results["model_only"]
    # Same cores for both on a CPU: the stages add up. A GPU runs the model beside the decoders.
    results["limit"] = (
        min(decode, model_rate) if results["device"] == "cuda"
        else 1 / (1 / decode + 1 / model_rate)
    )  # fmt: skip
    results["run_vs_limit"] = inner / results["limit"]
    if not args.no_baseline:
        results["pybioclip_cli"] = pybioclip(paths, args, workdir / "pybioclip.json")
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0)


def print_table(results: dict) -> None:
    print(f"\n{results['machine']}; model {results['model']} on {results['device']}; "
          f"{results['images']} JPEGs at {results['image_px']} px; batch {results['batch_size']}, "
          f"{results['workers']} decode workers\n")  # fmt: skip
    base = results.get("pybioclip_cli")
    rows = [
        ("decode + preprocess only (all workers)", results["decode_only"]),
        ("model only (pre-decoded tensors)", results["model_only"]),
        ("limit L for end to end (see docs/benchmarks.md)", results["limit"]),
        ("bioindex index, inside the run", results["bioindex_run"]),
        ("bioindex index, whole command", results["bioindex_cli"]),
        ("pybioclip `bioclip embed`, whole command", base),
    ]
    print(f"{'stage':<48}{'images/s':>10}{'vs pybioclip':>14}")
    for name, value in rows:
        if value is None:
            print(f"{name:<48}{'n/a':>10}")
            continue
        ratio = f"{value / base:.2f}x" if base else ""
        print(f"{name:<48}{value:>10.1f}{ratio:>14}")
    print(
        f"\nbioindex run / L = {results['run_vs_limit']:.2f}; peak RSS of the index command "
        f"{results['bioindex_peak_rss_mb']:.0f} MB"
    )


if __name__ == "__main__":
    main()
