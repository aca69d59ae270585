"""Held-out retrieval metrics of a model on freshly drawn synthetic organisms.

The same numbers are asserted by the tests and written into the demo model card.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from bioindex.demo.draw import draw_dataset
from bioindex.models import EmbeddingModel
from bioindex.taxonomy import RANKS


@dataclass
class DemoMetrics:
    species_text_p10: float  # taxonomic species string → images of that species
    genus_text_p10: float  # genus prefix string → images of that genus
    family_text_p10: float  # family prefix string → images of that family
    image_p10: float  # image → 10 nearest other images of the same species
    images: int
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)


def precision_at_k(scores: np.ndarray, relevant: np.ndarray, k: int = 10) -> float:
    """Mean over query rows of the share of the top-k columns that are relevant."""
    top = np.argsort(-scores, axis=1)[:, :k]
    return float(np.take_along_axis(relevant, top, axis=1).mean())


def evaluate(model: EmbeddingModel, seed: int = 12345, per_species: int = 12) -> DemoMetrics:
    pictures = draw_dataset(per_species, seed)
    images = np.concatenate(
        [
            model.embed_pil([image for _, image in pictures[i : i + 128]])
            for i in range(0, len(pictures), 128)
        ]
    )
    lineages = [species.taxon for species, _ in pictures]
    results = {}
    for rank in ("species", "genus", "family"):
        taxa = sorted({t.at_rank(rank) for t in lineages}, key=lambda t: t.lineage)
        texts = model.encode_texts([t.caption("taxonomic") for t in taxa])
        depth = RANKS.index(rank) + 1
        relevant = np.array([[lin.lineage[:depth] == t.lineage for lin in lineages] for t in taxa])
        results[rank] = precision_at_k(texts @ images.T, relevant)
    similarity = images @ images.T
    np.fill_diagonal(similarity, -np.inf)
    same = np.array([[a.lineage == b.lineage for b in lineages] for a in lineages])
    return DemoMetrics(
        species_text_p10=results["species"],
        genus_text_p10=results["genus"],
        family_text_p10=results["family"],
        image_p10=precision_at_k(similarity, same),
        images=len(pictures),
        seed=seed,
    )


def _main() -> None:
    import argparse
    import json

    from bioindex.models import load_model

    parser = argparse.ArgumentParser(description="Held-out metrics of a demo model.")
    parser.add_argument("--model", default="bioclip-demo")
    parser.add_argument("--seed", type=int, default=12345)
    args = parser.parse_args()
    metrics = evaluate(load_model(args.model, device="cpu"), seed=args.seed)
    print(json.dumps(metrics.to_dict(), indent=2))


if __name__ == "__main__":
    _main()
