"""Texts like the ones a store is searched with, to tune the index's setting for text
queries (IndexSpec.search_text): the captions the taxon and name searches make for the
catalog's taxa at every rank they name, and everyday group names, which a store without
labels is asked for too."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bioindex.taxonomy import RANKS, Taxon

# What people type into a search box of a natural-history collection, taxon names aside.
EVERYDAY = (
    "bird", "songbird", "owl", "hawk", "duck", "insect", "beetle", "butterfly", "moth", "bee",
    "ant", "dragonfly", "grasshopper", "spider", "fish", "frog", "lizard", "snake", "turtle",
    "mammal", "bat", "rodent", "deer", "fox", "flower", "tree", "fern", "moss", "grass",
    "mushroom", "lichen", "orchid", "cactus", "leaf", "seed", "shell", "crab", "snail",
    "starfish", "coral", "worm", "herbarium sheet", "pinned insect specimen", "skull",
    "feather", "egg", "animal at night", "red bird", "striped animal", "spotted insect",
)
# Higher taxa a user names without the catalog naming them.
HIGHER_TAXA = (
    "Animalia", "Plantae", "Fungi", "Chordata", "Arthropoda", "Mollusca", "Aves", "Mammalia",
    "Reptilia", "Amphibia", "Actinopterygii", "Insecta", "Arachnida", "Magnoliopsida",
    "Liliopsida", "Polypodiopsida", "Agaricomycetes", "Lepidoptera", "Coleoptera",
    "Hymenoptera", "Diptera", "Odonata", "Passeriformes", "Rosaceae", "Asteraceae",
    "Orchidaceae", "Fabaceae", "Poaceae",
)  # fmt: skip
LIMIT = 400  # probes in all: enough for a tight lower bound on recall, quick to encode


def probe_texts(taxa: Sequence[Taxon], limit: int = LIMIT, seed: int = 0) -> list[str]:
    """Up to `limit` distinct query texts: the fixed everyday and higher-taxon ones, then a
    seeded sample of the captions of `taxa` and of every rank above them."""
    fixed = [f"a photo of a {word}." for word in EVERYDAY]
    fixed += [f"a photo of {name}." for name in HIGHER_TAXA] + list(EVERYDAY[:10])
    own: dict[str, None] = {}
    for taxon in taxa:
        for depth, rank in enumerate(RANKS[: len(taxon.lineage)]):
            if not taxon.lineage[depth]:  # a rank the row leaves blank
                continue
            upper = taxon.at_rank(rank)
            own.setdefault(upper.caption("taxonomic"))
            own.setdefault(f"a photo of {upper.scientific_name}.")
            if upper.common_name:
                own.setdefault(f"a photo of {upper.common_name}.")
    captions = [c for c in own if c not in fixed]
    room = max(limit - len(fixed), 0)
    if len(captions) > room:
        chosen = np.random.default_rng(seed).choice(len(captions), room, replace=False)
        captions = [captions[i] for i in sorted(chosen)]
    return (fixed + captions)[:limit]
