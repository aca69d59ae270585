"""Ingest throughput: decode-only, model-only and end-to-end images/s, against pybioclip.

    python benchmarks/ingest.py                          # CPU, demo model, 1000 × 1024 px
    python benchmarks/ingest.py --images 200 --size 224  # a TreeOfLife-like shard size
    python benchmarks/ingest.py --model ViT-B-16 --checkpoint random --device cuda

Prints a table and writes JSON (--out). Every figure comes from the same run on the same
images, so the ratios are the numbers to compare across machines. The pybioclip baseline is
its own `bioclip embed` command with the same weights (skipped when pybioclip is absent or
the model is not a local-dir). Both tools are also timed on one batch of the images, and the
difference gives each one's rate once running ("after start-up"), the figure that matters on
a large collection; the ratios compare like with like.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROUND_KEYS = ("decode_only", "model_only", "bioindex_run", "bioindex_steady", "bioindex_cli",
              "bioindex_peak_rss_mb", "pybioclip_steady", "pybioclip_cli")  # fmt: skip


def make_images(folder: Path, count: int, size: int, seed: int = 0, repeat: int = 1) -> list[Path]:
    """Photo-like JPEGs: demo organisms drawn at `size` px with sensor-like noise. With
    `repeat` > 1 each file is also hard-linked under repeat - 1 more names: a large set for
    a fast machine without drawing it (decoding does not care that the bytes recur)."""
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
    copies = []
    for copy in range(1, repeat):
        for original in paths:
            path = folder / f"{original.stem}-{copy:03d}.jpg"
            if not path.exists():
                os.link(original, path)
            copies.append(path)
    for stale in set(folder.glob("*.jpg")) - set(paths) - set(copies):
        stale.unlink()  # left by an earlier run with other counts: the CLI would index it
    return paths + copies


def _items(paths: list[Path]) -> list:
    """The files as a run's scan lists them."""
    from bioindex.indexer.sources import Item

    return [Item(str(p), str(p), p.stat().st_size, p.stat().st_mtime) for p in paths]


def decode_only(paths: list[Path], model, workers: int, batch_size: int, fast: bool,
                device_decode: bool = False) -> float:  # fmt: skip
    """The product's own decode stage (read, decode, resize, batch), run without the model;
    with `device_decode`, JPEGs the device takes are decoded there, as a run does."""
    from bioindex.indexer.device_decode import crop_geometry
    from bioindex.indexer.embed import _finish_on_device, batch_loader, split_transform

    geometry = crop_geometry(split_transform(model.transform)[0]) if device_decode else None
    items = _items(paths)
    started = time.perf_counter()
    count = 0
    for batch in batch_loader(items, model, batch_size, workers, fast, geometry is not None):
        if batch.get("raw_sizes"):
            batch = _finish_on_device(batch, model.device, geometry)
        count += len(batch["position"])
    _synchronize(model)
    return count / (time.perf_counter() - started)


def bytes_only(paths: list[Path], model, workers: int, batch_size: int) -> float:
    """What the workers do when the device decodes: read, hash and check JPEGs, and hand
    the bytes over (the CPU side of a run with device decoding)."""
    from bioindex.indexer.embed import batch_loader

    items = _items(paths)
    started = time.perf_counter()
    loader = batch_loader(items, model, batch_size, workers, raw_jpeg=True)
    count = sum(len(batch["position"]) for batch in loader)
    return count / (time.perf_counter() - started)


def model_only(model, count: int, batch_size: int) -> float:
    """The model on pre-decoded uint8 pixels, fed the way a run feeds it (channels-last
    pinned batches, one in flight)."""
    import torch

    from bioindex.indexer.embed import split_transform, start_pixels

    _, mean, std = split_transform(model.transform)
    size = model.identity.image_size
    pixels = torch.randint(0, 256, (batch_size, size, size, 3), dtype=torch.uint8)
    if model.device == "cuda":
        pixels = pixels.pin_memory()
    pixels = pixels.permute(0, 3, 1, 2)
    if mean is None:  # a transform that does not end in ToTensor + Normalize
        pixels = pixels.float().div(255)
    for _ in range(2):  # warm-up: cuDNN autotuning, lazy init, torch.compile
        start_pixels(model, pixels, mean, std)()
    done = 0
    pending = None
    started = time.perf_counter()
    while done < count:
        queued = start_pixels(model, pixels, mean, std)
        if pending is not None:
            pending()
        pending = queued
        done += batch_size
    pending()
    return done / (time.perf_counter() - started)


def write_only(dim: int, count: int, folder: Path, chunk: int = 2048) -> float:
    """The write stage alone: catalog rows, vector shard and FAISS add, in commit-sized
    chunks (what the writer thread does beside the model)."""
    from bioindex.store import ImageRecord, Store

    shutil.rmtree(folder, ignore_errors=True)
    store = Store.create(folder, {"dim": dim, "name": "write-only"})
    store.index()
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        records = [ImageRecord(f"/data/images/img{i:09d}.jpg", 48_000, 1.7e9, "0" * 64, 1024,
                               768, {}) for i in range(start, start + n)]  # fmt: skip
        vectors = rng.standard_normal((n, dim)).astype(np.float32)
        store.commit(records, vectors / np.linalg.norm(vectors, axis=1, keepdims=True), run_id=1)
    store.save_index()
    rate = count / (time.perf_counter() - started)
    store.close()
    shutil.rmtree(folder, ignore_errors=True)
    return rate


def _synchronize(model) -> None:
    if model.device == "cuda":
        model._torch.cuda.synchronize()


def after_startup(count: int, seconds: float, few: int, few_seconds: float) -> float:
    """Images/s once a command is running: the difference between the whole set and one
    batch of it takes out what a command pays once (imports, model load, torch.compile,
    worker start-up), the same way for both tools."""
    return (count - few) / max(seconds - few_seconds, 1e-9)


def end_to_end(paths: list[Path], args: argparse.Namespace, store: Path, few: int
               ) -> tuple[float, float, float, float]:  # fmt: skip
    """(images/s inside the run, images/s after start-up, images/s of the whole CLI command,
    peak RSS in MB of the command and its decode workers)."""
    inner, seconds, rss = index_command([paths[0].parent], args, store)
    _, few_seconds, _ = index_command(paths[:few], args, store)
    return (inner, after_startup(len(paths), seconds, few, few_seconds), len(paths) / seconds,
            rss)  # fmt: skip


def index_command(sources: list[Path], args: argparse.Namespace, store: Path
                  ) -> tuple[float, float, float]:  # fmt: skip
    """`bioindex index` into a fresh store: (images/s of its summary line, wall seconds,
    peak RSS in MB)."""
    shutil.rmtree(store, ignore_errors=True)
    command = [sys.executable, "-m", "bioindex.cli", "index", *map(str, sources), "--store",
               str(store), "--model", args.model, "--device", args.device, "-q"]  # fmt: skip
    if args.checkpoint:
        command += ["--checkpoint", args.checkpoint]
    if args.batch_size:
        command += ["--batch-size", str(args.batch_size)]
    if args.workers is not None:
        command += ["--workers", str(args.workers)]
    if args.fast_decode:
        command += ["--fast-decode"]
    if args.compile:
        command += ["--compile"]
    if args.precision != "auto":
        command += ["--precision", args.precision]
    if args.gpu_decode is not None:
        command += ["--gpu-decode" if args.gpu_decode else "--no-gpu-decode"]
    with tempfile.TemporaryFile("w+") as output:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, text=True)
        # wait4 gives this command's own peak RSS (its waited-for workers included).
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        output.seek(0)
        text = output.read()
    if process.returncode:
        raise SystemExit(f"bioindex index failed ({process.returncode}):\n{text[-3000:]}")
    inner = float(text.rsplit("(", 1)[1].split()[0])
    return inner, wall, usage.ru_maxrss / 1024


def pybioclip(paths: list[Path], args: argparse.Namespace, out: Path, few: int
              ) -> tuple[float, float] | None:  # fmt: skip
    """(images/s after start-up, images/s of the whole command) of pybioclip's `embed`."""
    executable = shutil.which("bioclip")
    if executable is None or not args.model.startswith("local-dir:"):
        return None

    def seconds(files: list[Path]) -> float:
        command = [executable, "embed", "--model", args.model, "--device", args.device,
                   "--batch-size", str(args.batch_size or 32), "--output", str(out),
                   *map(str, files)]  # fmt: skip
        started = time.perf_counter()
        subprocess.run(command, capture_output=True, text=True, check=True)
        return time.perf_counter() - started

    whole, one_batch = seconds(paths), seconds(paths[:few])
    return after_startup(len(paths), whole, few, one_batch), len(paths) / whole


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
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="hard-link each image this many times (a large set, drawn once)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="run the stages in turn this many times; report medians",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the image tower")
    parser.add_argument("--precision", choices=["auto", "float32", "bf16"], default="auto",
                        help="the image tower's numbers, as `bioindex index --precision`")
    parser.add_argument(
        "--gpu-decode",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="JPEG decoding on the GPU (default: on with CUDA)",
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ingest.json"))
    args = parser.parse_args()

    from bioindex.indexer.embed import default_batch_size, default_workers
    from bioindex.models import load_model, resolve_name

    if args.model in ("bioclip-demo", "demo"):
        args.model = resolve_name(args.model)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bioindex-bench-"))
    paths = make_images(workdir / f"images-{args.size}", args.images, args.size,
                        repeat=args.repeat)  # fmt: skip
    model = load_model(args.model, checkpoint=args.checkpoint, device=args.device)
    model.set_precision(args.precision)
    if args.compile:
        model.compile_visual()
    from bioindex.indexer.device_decode import use_device_decode
    from bioindex.indexer.embed import split_transform

    device_decode = use_device_decode(model, split_transform(model.transform)[0],
                                      args.gpu_decode)  # fmt: skip
    batch_size = args.batch_size or default_batch_size(model.device)
    workers = default_workers(model.device) if args.workers is None else args.workers

    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   + (_gpu_name() if model.device == "cuda" else "no GPU used"),
        "model": args.model, "device": model.device, "images": len(paths),
        "image_px": args.size, "batch_size": batch_size, "workers": workers,
    }  # fmt: skip
    results.update(fast_decode=args.fast_decode, device_decode=device_decode,
                   compile=args.compile, precision=args.precision,
                   repeat=args.repeat)  # fmt: skip
    # Capacity of decoding on all cores, as the limit L is defined (docs/benchmarks.md).
    all_cores = os.cpu_count() or 1
    if device_decode:
        results["bytes_only"] = bytes_only(paths, model, all_cores, batch_size)
    results["write_only"] = write_only(model.identity.dim, max(len(paths), 20_000),
                                       workdir / "write-only")  # fmt: skip
    # The stages take turns, `--rounds` times, and each figure is the median of its rounds:
    # on a noisy machine a slow minute then lands in every stage alike.
    samples: dict[str, list[float]] = {key: [] for key in ROUND_KEYS}
    for _ in range(args.rounds):
        samples["decode_only"].append(decode_only(paths, model, all_cores, batch_size,
                                                  args.fast_decode, device_decode))  # fmt: skip
        samples["model_only"].append(model_only(model, max(batch_size * 20, min(len(paths), 1024)),
                                                batch_size))  # fmt: skip
        inner, steady, wall, rss = end_to_end(paths, args, workdir / "store", batch_size)
        samples["bioindex_run"].append(inner)
        samples["bioindex_steady"].append(steady)
        samples["bioindex_cli"].append(wall)
        samples["bioindex_peak_rss_mb"].append(rss)
        if not args.no_baseline and (
            base := pybioclip(paths, args, workdir / "pyb.json", batch_size)
        ):
            samples["pybioclip_steady"].append(base[0])
            samples["pybioclip_cli"].append(base[1])
    del model
    results.update({key: statistics.median(values) for key, values in samples.items() if values})
    results["rounds"] = samples
    decode, model_rate = results["decode_only"], results["model_only"]
    # Same cores for both on a CPU: the stages add up. A GPU runs the model beside the decoders.
    results["limit"] = (
        min(decode, model_rate) if results["device"] == "cuda"
        else 1 / (1 / decode + 1 / model_rate)
    )  # fmt: skip
    results["run_vs_limit"] = results["bioindex_run"] / results["limit"]
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
          f"{results['workers']} decode workers"
          + (f"; each drawn image hard-linked {results['repeat']}x" if results["repeat"] > 1
             else "")
          + ("; JPEG decoding on the GPU" if results["device_decode"] else "")
          + ("; torch.compile" if results["compile"] else "")
          + (f"; precision {results['precision']}" if results.get("precision", "auto") != "auto"
             else "") + "\n")  # fmt: skip
    # Like with like: rates once running against pybioclip's once running, whole commands
    # (start-up included) against its whole command.
    steady, whole = results.get("pybioclip_steady"), results.get("pybioclip_cli")
    rows = [
        ("decode + preprocess only (all workers)", results["decode_only"], steady),
        ("  workers' part alone (read, hash, hand over)", results.get("bytes_only"), steady),
        ("model only (pre-decoded tensors)", results["model_only"], steady),
        ("write only (catalog + shards + FAISS, own thread)", results["write_only"], steady),
        ("limit L for end to end (see docs/benchmarks.md)", results["limit"], steady),
        ("bioindex index, inside the run", results["bioindex_run"], steady),
        ("bioindex index, after start-up", results["bioindex_steady"], steady),
        ("pybioclip `bioclip embed`, after start-up", steady, steady),
        ("bioindex index, whole command", results["bioindex_cli"], whole),
        ("pybioclip `bioclip embed`, whole command", whole, whole),
    ]
    print(f"{'stage':<50}{'images/s':>10}{'vs pybioclip':>14}")
    for name, value, base in rows:
        if value is None and name.startswith(" "):
            continue  # a detail row that does not apply to this run
        if value is None:
            print(f"{name:<50}{'n/a':>10}")
            continue
        ratio = f"{value / base:.2f}x" if base else ""
        print(f"{name:<50}{value:>10.1f}{ratio:>14}")
    print(
        f"\nbioindex run / L = {results['run_vs_limit']:.2f}; peak RSS of the index command "
        f"{results['bioindex_peak_rss_mb']:.0f} MB"
    )


if __name__ == "__main__":
    main()
