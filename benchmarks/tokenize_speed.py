"""Tokenizing a label set: open_clip's tokenizer against bioindex's word-at-a-time one.

    python benchmarks/tokenize_speed.py                      # 5,000 names x 80 templates
    python benchmarks/tokenize_speed.py --names 1000 --rounds 3

A zero-shot label set is every name in each of open_clip's 80 ImageNet templates
(`bioindex classify --labels`): 400,000 prompts for 5,000 names. Both tokenizers run over
the same prompts in the same run, and their tokens are compared (they must be equal).
Names are invented binomials, a new genus and epithet each (no word shared between names:
the least a word cache can help; real lists share genera). Also one query at a time, and
the demo model's `encode_texts` over 1,000 names' prompts (whose text tower is small, so tokenizing
was most of its time). Prints a table and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

SYLLABLES = ("ca", "lo", "ri", "pha", "ne", "tus", "mi", "cro", "ax", "ul", "to", "spe",
             "bo", "ly", "gra", "dae", "xi", "or", "pel", "qua")  # fmt: skip


def invented_names(count: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)

    def word() -> str:
        return "".join(rng.choice(SYLLABLES, size=int(rng.integers(2, 5))))

    return [f"{word().capitalize()}{i} {word()}" for i in range(count)]


def timed(call, rounds: int) -> tuple[float, object]:
    """(best seconds of `rounds` calls, the last result)."""
    best, out = float("inf"), None
    for _ in range(rounds):
        started = time.perf_counter()
        out = call()
        best = min(best, time.perf_counter() - started)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/tokenize_speed.json"))
    args = parser.parse_args()

    import torch
    from open_clip.tokenizer import SimpleTokenizer

    from bioindex.models import load_model
    from bioindex.search.labels import openai_templates
    from bioindex.tokens import WordTokenizer

    names = invented_names(args.names)
    prompts = [template(name) for name in names for template in openai_templates()]
    rows = []

    def row(case: str, texts: int, base_s: float, fast_s: float) -> None:
        rows.append({"case": case, "texts": texts, "open_clip_s": round(base_s, 3),
                     "bioindex_s": round(fast_s, 3),
                     "ratio": round(base_s / fast_s, 1)})  # fmt: skip

    plain = SimpleTokenizer()
    base_s, expected = timed(lambda: plain(prompts), 1)
    # A fresh word cache each round: the figure includes learning every word once.
    fast_s, found = timed(lambda: WordTokenizer(plain)(prompts), args.rounds)
    assert torch.equal(found, expected), "the word-at-a-time tokens differ"
    row(f"label set: {args.names:,} names x 80 templates", len(prompts), base_s, fast_s)

    queries = [f"a photo of {name}." for name in names[:2000]]
    fast = WordTokenizer(plain)
    base_s, _ = timed(lambda: [plain(q) for q in queries], args.rounds)
    fast_s, _ = timed(lambda: [fast(q) for q in queries], args.rounds)
    row("one query at a time (2,000 queries)", len(queries), base_s, fast_s)

    model = load_model("bioclip-demo", device="cpu")
    some = prompts[: min(len(prompts), 80_000)]  # what a label set of 1,000 names encodes
    fast_s, vectors = timed(lambda: model.encode_texts(some), 1)
    model.tokenizer = plain  # as before: open_clip's tokenizer, whole texts
    base_s, before = timed(lambda: model.encode_texts(some), 1)
    assert np.allclose(vectors, before, atol=1e-6), "the text vectors differ"
    row(f"encode_texts, demo model ({len(some) // 80:,} names)", len(some), base_s, fast_s)

    print(f"{'case':48} {'texts':>9} {'open_clip s':>12} {'bioindex s':>11} {'ratio':>6}")
    for r in rows:
        print(f"{r['case']:48} {r['texts']:>9,} {r['open_clip_s']:>12} {r['bioindex_s']:>11}"
              f" {r['ratio']:>5}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"names": args.names, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
