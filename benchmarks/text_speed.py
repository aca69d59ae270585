"""Text-tower speed: the whole 77-token context against running up to the end token.

    python benchmarks/text_speed.py                                  # demo model and ViT-B-16
    python benchmarks/text_speed.py --models bioclip-demo --rounds 5

Every text query, taxon search and zero-shot label set goes through the text tower. CLIP's
is causal and read at the end-of-text token, so `bioindex.models.encode_text_trimmed` stops
at a batch's longest text; open_clip's `encode_text` runs all 77 positions. Both are timed
on the demo tree's species in BioCLIP's caption formats, one text at a time (a query) and
in batches of 256 (a label set), in the same run; the vectors are compared. ViT-B-16 has
random weights (speed only; BioCLIP's shape). Prints a table and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

FORMATS = ("scientific", "taxonomic_common")


def texts_of(fmt: str, count: int) -> list[str]:
    """`count` captions of the demo tree's species (repeated round the tree if need be)."""
    from bioindex.demo.tree import SPECIES

    return [SPECIES[i % len(SPECIES)].taxon.caption(fmt) for i in range(count)]


def rate(encode, tokens_batches, rounds: int) -> tuple[float, np.ndarray]:
    """(texts/s, the vectors of the first round) for `encode` over the token batches."""
    import torch

    with torch.inference_mode():
        out = [encode(tokens) for tokens in tokens_batches[:1]]  # warm-up
        started = time.perf_counter()
        for _ in range(rounds):
            out = [encode(tokens).float() for tokens in tokens_batches]
        seconds = time.perf_counter() - started
    texts = sum(len(t) for t in tokens_batches) * rounds
    return texts / seconds, torch.cat(out).numpy()


def measure(name: str, checkpoint: str | None, rounds: int) -> list[dict]:
    from bioindex.models import encode_text_trimmed, load_model

    model = load_model(name, checkpoint=checkpoint, device="cpu")
    net, rows = model.model, []
    for fmt in FORMATS:
        for batch in (1, 256):
            count = 16 if batch == 1 else 256
            texts = texts_of(fmt, count)
            batches = [model.tokenizer(texts[i : i + batch]) for i in range(0, count, batch)]
            whole, a = rate(net.encode_text, batches, rounds)
            trimmed, b = rate(lambda t: encode_text_trimmed(net, t), batches, rounds)
            tokens = max(int(t.argmax(-1).max()) + 1 for t in batches)
            a /= np.linalg.norm(a, axis=1, keepdims=True)
            b /= np.linalg.norm(b, axis=1, keepdims=True)
            rows.append({"model": name, "format": fmt, "batch": batch, "tokens": tokens,
                         "whole_per_s": whole, "trimmed_per_s": trimmed,
                         "speed_up": trimmed / whole,
                         "min_cosine": float((a * b).sum(axis=1).min())})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["bioclip-demo", "ViT-B-16"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/text_speed.json"))
    args = parser.parse_args()
    import torch

    rows = []
    for name in args.models:
        rows += measure(name, None if name.startswith("bioclip") else "random", args.rounds)
    print(f"torch threads {torch.get_num_threads()}, CPU")
    print("| model | format | batch | tokens | whole texts/s | trimmed texts/s | speed-up "
          "| min cosine |")  # fmt: skip
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['model']} | {r['format']} | {r['batch']} | {r['tokens']} "
              f"| {r['whole_per_s']:.1f} | {r['trimmed_per_s']:.1f} | {r['speed_up']:.2f}× "
              f"| {r['min_cosine']:.7f} |")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
