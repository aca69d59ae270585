"""What is this specimen? Zero-shot over a label set, a vote of labelled neighbours, or both.

Zero-shot follows pybioclip: probabilities are softmax(logit_scale · image · labelsᵀ) over the
species labels, then summed by lineage up to the asked rank. The neighbour vote (knn) weighs
each labelled neighbour in the store by its cosine similarity. `combined` averages the two.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bioindex.errors import BioindexError
from bioindex.search.labels import LabelSet, taxon_from_row
from bioindex.search.query import nearest
from bioindex.store import Store
from bioindex.taxonomy import RANKS, Taxon

METHODS = ("zero-shot", "knn", "combined")
DEFAULT_NEIGHBOURS = 20


@dataclass
class Prediction:
    file: str
    score: float
    taxon: Taxon | None = None
    label: str | None = None
    error: str | None = None  # the file could not be read: no prediction

    def to_dict(self) -> dict:
        row: dict = {"file": self.file}
        if self.error is not None:
            return {**row, "error": self.error}
        if self.taxon is not None:
            row.update(self.taxon.to_row())
        else:
            row["label"] = self.label
        row["score"] = round(self.score, 6)
        return row


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def zero_shot_probabilities(
    image_vectors: np.ndarray, label_vectors: np.ndarray, logit_scale: float
) -> np.ndarray:
    """[images, labels] probabilities."""
    return softmax(logit_scale * (image_vectors @ label_vectors.T))


def by_rank(probabilities: np.ndarray, taxa: Sequence[Taxon], rank: str) -> dict[Taxon, float]:
    """Sum per-species probabilities by lineage up to `rank`."""
    depth = RANKS.index(rank) + 1
    totals: dict[Taxon, float] = defaultdict(float)
    for p, taxon in zip(probabilities, taxa):
        if len(taxon.lineage) >= depth:
            totals[taxon.at_rank(rank)] += float(p)
    return dict(totals)


def knn_vote(
    store: Store, vector: np.ndarray, rank: str, neighbours: int = DEFAULT_NEIGHBOURS,
    exclude: set[int] | None = None, logit_scale: float = 100.0,
) -> dict[Taxon, float]:  # fmt: skip
    """Share of vote per taxon among the labelled nearest neighbours, each neighbour weighted
    by exp(logit_scale · cosine) — the model's own temperature, so a clearly closer
    neighbour outweighs a crowd of slightly farther ones (plain cosine weights are nearly
    uniform, since all neighbours' cosines are close)."""
    pairs = nearest(store, vector, neighbours, exclude=exclude, where=_labelled(rank))
    if not pairs:
        return {}
    ids = [i for _, i in pairs]
    rows = store.catalog.taxa_of(ids)
    votes: dict[Taxon, float] = defaultdict(float)
    depth = RANKS.index(rank) + 1
    best = pairs[0][0]
    for score, image_id in pairs:
        taxon = taxon_from_row(rows[image_id])
        if taxon is not None and len(taxon.lineage) >= depth:
            votes[taxon.at_rank(rank)] += float(np.exp(logit_scale * (score - best)))
    total = sum(votes.values())
    return {t: v / total for t, v in votes.items()} if total > 0 else {}


def _labelled(rank: str):
    from bioindex.search.filters import Filter

    column = {"species": "scientific_name", "class": '"class"', "order": '"order"'}.get(rank, rank)
    if rank == "species":
        sql = "(specific_epithet IS NOT NULL OR scientific_name LIKE '% %')"
    else:
        sql = f"{column} IS NOT NULL AND {column} <> ''"
    return Filter(conditions=[f"labelled at {rank}"], sql=sql, params=[])


def classify_vectors(
    files: Sequence[str],
    image_vectors: np.ndarray,
    *,
    rank: str = "species",
    k: int = 5,
    method: str = "zero-shot",
    labels: LabelSet | None = None,
    label_vectors: np.ndarray | None = None,
    logit_scale: float = 100.0,
    store: Store | None = None,
    neighbours: int = DEFAULT_NEIGHBOURS,
) -> list[Prediction]:
    """Top-k predictions per image, best first."""
    if rank not in RANKS:
        raise BioindexError(f"unknown rank {rank!r}; choose one of {', '.join(RANKS)}")
    if method not in METHODS:
        raise BioindexError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method != "knn" and (labels is None or label_vectors is None):
        raise BioindexError(f"{method} classification needs a label set")
    if method != "zero-shot" and store is None:
        raise BioindexError(f"--method {method} needs a store with labelled images (--store)")
    if labels is not None and not labels.has_lineage and method != "zero-shot":
        raise BioindexError("custom labels have no lineage; use --method zero-shot with them")
    if labels is not None and not labels.has_lineage and rank != "species":
        raise BioindexError(f"custom labels have no lineage to sum up to rank {rank}")

    probabilities = None
    if method != "knn":
        probabilities = zero_shot_probabilities(image_vectors, label_vectors, logit_scale)
    predictions: list[Prediction] = []
    for i, file in enumerate(files):
        if probabilities is not None and not labels.has_lineage:
            top = np.argsort(-probabilities[i])[:k]
            predictions.extend(
                Prediction(file, float(probabilities[i][j]), label=labels.names[j]) for j in top
            )
            continue
        scores: dict[Taxon, float] = {}
        if probabilities is not None:
            scores = by_rank(probabilities[i], labels.taxa, rank)
        if method != "zero-shot":
            votes = knn_vote(store, image_vectors[i], rank, neighbours,
                             logit_scale=logit_scale)  # fmt: skip
            if method == "knn":
                scores = votes
            else:
                keys = set(scores) | set(votes)
                scores = {t: 0.5 * scores.get(t, 0.0) + 0.5 * votes.get(t, 0.0) for t in keys}
        best = sorted(scores.items(), key=lambda item: (-item[1], item[0].lineage))[:k]
        predictions.extend(Prediction(file, score, taxon=taxon) for taxon, score in best)
    return predictions
