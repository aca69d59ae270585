"""Image-tower speed by numeric format: the model alone on pre-made pixels.

    python benchmarks/model_speed.py --model ViT-B-16 --checkpoint random --device cuda
    python benchmarks/model_speed.py --device cpu --batches 10       # demo model, CPU
    python benchmarks/model_speed.py --model ViT-B-16 --checkpoint random --device cpu \
        --batch-size 32 --batches 4     # what a museum without a GPU lives with

On a GPU the model-only figure of the ingest benchmark (bf16 autocast over float32
weights, the product's path) is what end to end can reach at most, so this asks what the
other formats would give: weights cast to bf16 (LayerNorm, GELU and the residual adds then
run in bf16 too, half the memory traffic of autocast's float32 there) and, with --compile,
the same under torch.compile. Each variant's vectors are compared (cosine) with float32's
on the same pixels. Prints a table and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import time
from pathlib import Path

import numpy as np


def speed(tower, pixels, batches: int, autocast: bool, torch) -> tuple[float, np.ndarray]:
    """(images/s, float32 vectors of `pixels`) for `tower` on `pixels`, `batches` times."""
    device = pixels.device.type
    context = (torch.autocast(device, dtype=torch.bfloat16) if autocast
               else contextlib.nullcontext())  # fmt: skip
    dtype = next(tower.parameters()).dtype
    inputs = pixels.to(dtype)
    with torch.inference_mode(), context:
        for _ in range(3):  # warm-up: cuDNN/cuBLAS choices, lazy init, compilation
            out = tower(inputs)
        _synchronize(torch, device)
        started = time.perf_counter()
        for _ in range(batches):
            out = tower(inputs)
        _synchronize(torch, device)
        seconds = time.perf_counter() - started
    return batches * len(pixels) / seconds, out.float().cpu().numpy()


def _synchronize(torch, device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def cosines(a: np.ndarray, b: np.ndarray) -> float:
    """The lowest row-wise cosine between two sets of vectors."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bioclip-demo")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/model_speed.json"))
    args = parser.parse_args()

    import torch

    from bioindex.indexer.embed import default_batch_size
    from bioindex.models import load_model

    model = load_model(args.model, checkpoint=args.checkpoint, device=args.device)
    tower = model.model.visual.eval()
    size = model.identity.image_size
    batch = args.batch_size or default_batch_size(model.device)
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn((batch, 3, size, size), generator=generator).to(model.device)
    pixels = pixels.contiguous(memory_format=torch.channels_last)

    half = copy.deepcopy(tower).to(torch.bfloat16)
    variants = [("float32", tower, False), ("bf16 autocast (bioindex, CUDA)", tower, True),
                ("bf16 weights (--precision bf16)", half, False)]  # fmt: skip
    if args.compile:
        variants += [("bf16 autocast, compiled", torch.compile(tower), True),
                     ("bf16 weights, compiled", torch.compile(half), False)]  # fmt: skip
    rows = []
    reference = None
    for name, variant, autocast in variants:
        rate, vectors = speed(variant, pixels, args.batches, autocast, torch)
        reference = vectors if reference is None else reference
        cosine = cosines(reference, vectors)
        rows.append({"variant": name, "images_per_s": rate, "min_cosine_vs_float32": cosine})
        print(f"{name:<32}{rate:>12.1f} images/s   min cosine {cosine:.6f}", flush=True)
    results = {"model": args.model, "device": model.device, "batch_size": batch,
               "image_px": size, "batches": args.batches, "variants": rows}  # fmt: skip
    if model.device == "cuda":
        results["gpu"] = torch.cuda.get_device_name(0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
