"""Train the offline demo model: a tiny open_clip CLIP on the synthetic tree of life (CPU).

    python -m bioindex.demo.train --out data/models/bioclip-demo

Captions follow BioCLIP's mix of text types, chosen at random per sample: taxonomic,
scientific, common and taxonomic+common strings, plus (our addition, so that a higher taxon
can be searched by its own prefix string) taxonomic prefixes down to a random rank, and now
and then one of the 80 OpenAI ImageNet templates around the taxonomic string (so that
template-averaged zero-shot classifiers see familiar text).

Several pictures in a batch often share a species, so the loss is CLIP's symmetric
cross-entropy with soft targets: every caption that truly describes an image (at the
caption's rank) counts as a positive for it.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from bioindex.demo.draw import draw_dataset
from bioindex.demo.tree import SPECIES
from bioindex.taxonomy import FORMATS, RANKS
from bioindex.tiny import save_local_dir, tiny_config

DEMO_CONFIG = dict(
    embed_dim=64, image_size=96, width=128, layers=4, patch_size=12,
    text_width=64, text_layers=3, context_length=77,
)  # fmt: skip
# Probabilities of the caption kinds, BioCLIP's four formats then the additions.
CAPTION_MIX = {
    "taxonomic": 0.25, "scientific": 0.15, "common": 0.15, "taxonomic_common": 0.15,
    "prefix": 0.2, "template": 0.1,
}  # fmt: skip


def caption_bank(rng: np.random.Generator) -> tuple[list[str], np.ndarray, list[str]]:
    """All distinct captions, a [caption, species] match matrix, and the caption kinds."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    captions: list[str] = []
    kinds: list[str] = []
    match_rows: list[np.ndarray] = []
    seen: dict[str, int] = {}

    def add(text: str, kind: str, matches: np.ndarray) -> None:
        if text not in seen:
            seen[text] = len(captions)
            captions.append(text)
            kinds.append(kind)
            match_rows.append(matches)

    for s in SPECIES:
        same = np.array([o.taxon.lineage == s.taxon.lineage for o in SPECIES])
        for fmt in FORMATS:
            add(s.taxon.caption(fmt), fmt, same)
        for template in OPENAI_IMAGENET_TEMPLATES:
            add(template(s.taxon.text("taxonomic")), "template", same)
        for depth, rank in enumerate(RANKS[:-1], start=1):
            prefix = s.taxon.at_rank(rank)
            matches = np.array([o.taxon.lineage[:depth] == prefix.lineage for o in SPECIES])
            add(prefix.caption("taxonomic"), "prefix", matches)
    return captions, np.stack(match_rows), kinds


def train(
    out: Path, steps: int, batch_size: int, per_species: int, seed: int, lr: float,
    threads: int,
) -> dict:  # fmt: skip
    import open_clip
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    config = tiny_config(**DEMO_CONFIG)
    model = open_clip.CLIP(**config["model_cfg"])
    transform = open_clip.image_transform(
        DEMO_CONFIG["image_size"], is_train=False,
        mean=config["preprocess_cfg"]["mean"], std=config["preprocess_cfg"]["std"],
    )  # fmt: skip
    tokenizer = open_clip.get_tokenizer("ViT-B-32")  # the standard CLIP BPE, context 77

    started = time.time()
    pictures = draw_dataset(per_species, seed)
    images = torch.stack([transform(image) for _, image in pictures]).to(torch.float16)
    species_of = torch.tensor([SPECIES.index(s) for s, _ in pictures])
    captions, match, kinds = caption_bank(rng)
    tokens = tokenizer(captions)
    match_t = torch.from_numpy(match)
    by_kind: dict[str, list[np.ndarray]] = {}
    for kind in CAPTION_MIX:
        per_species_ids = []
        for s_index in range(len(SPECIES)):
            ids = [c for c, k in enumerate(kinds) if k == kind and match[c, s_index]]
            per_species_ids.append(np.array(ids))
        by_kind[kind] = per_species_ids
    print(f"drew {len(pictures)} pictures and {len(captions)} captions "
          f"in {time.time() - started:.0f}s", flush=True)  # fmt: skip

    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    warmup = max(1, steps // 20)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, schedule)
    kind_names = list(CAPTION_MIX)
    kind_p = np.array([CAPTION_MIX[k] for k in kind_names])
    model.train()
    for step in range(steps):
        batch = torch.from_numpy(rng.choice(len(pictures), batch_size, replace=False))
        batch_species = species_of[batch].numpy()
        chosen_kinds = rng.choice(len(kind_names), batch_size, p=kind_p)
        caption_ids = np.array([
            rng.choice(by_kind[kind_names[k]][s]) for k, s in zip(chosen_kinds, batch_species)
        ])  # fmt: skip
        image_features = F.normalize(model.encode_image(images[batch].float()), dim=-1)
        text_features = F.normalize(model.encode_text(tokens[caption_ids]), dim=-1)
        logits = model.logit_scale.exp() * image_features @ text_features.T
        # targets[i, j]: caption j truly describes image i
        targets = match_t[caption_ids][:, species_of[batch]].T.float()
        loss_images = -(F.log_softmax(logits, dim=1) * targets / targets.sum(1, keepdim=True))
        loss_texts = -(F.log_softmax(logits.T, dim=1) * targets.T / targets.T.sum(1, keepdim=True))
        loss = (loss_images.sum(1).mean() + loss_texts.sum(1).mean()) / 2
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        scheduler.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step:5d}  loss {loss.item():.3f}  "
                  f"scale {model.logit_scale.exp().item():.1f}  "
                  f"{time.time() - started:.0f}s", flush=True)  # fmt: skip
    model.eval()
    save_local_dir(model, config, out, half=True)
    return {
        "steps": steps, "batch_size": batch_size, "pictures": len(pictures), "seed": seed,
        "lr": lr, "train_seconds": round(time.time() - started, 1),
        "captions": len(captions), "config": DEMO_CONFIG, "caption_mix": CAPTION_MIX,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/models/bioclip-demo"))
    parser.add_argument("--steps", type=int, default=1100)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--per-species", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    report = train(args.out, args.steps, args.batch_size, args.per_species, args.seed, args.lr,
                   args.threads)  # fmt: skip

    from bioindex.demo.evaluate import evaluate
    from bioindex.models import load_model

    metrics = evaluate(load_model(f"local-dir:{args.out}", device="cpu"))
    report["heldout"] = metrics.to_dict()
    (args.out / "training.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report["heldout"], indent=2))


if __name__ == "__main__":
    main()
