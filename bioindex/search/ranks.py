"""Scores summed up the tree of life for many images at once: per-candidate scores at one
rank, their totals at each rank above, and the deepest rank whose best named total is sure
enough (the rule of search.classify.decide).

A candidate whose lineage stops above a rank adds to no total there; one whose name at a
rank is blank (a species of an unnamed family) adds to an unnamed total, which is never an
answer. Each rank's totals are one matrix product: summing each image's dict of candidates
in Python cost 56 ms an image over 3,000 species (benchmarks/answers.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from bioindex.taxonomy import RANKS, Taxon

if TYPE_CHECKING:
    from scipy import sparse


def _order(taxon: Taxon) -> tuple[tuple[str, ...], str]:
    return taxon.lineage, taxon.common_name


@dataclass(frozen=True)
class Scores:
    """[images, candidates] scores, the candidates distinct and in lineage order (ties in
    a top-k list go to the first), and which candidates each image was given (a neighbour
    vote names a few; the rest are absent, not zero)."""

    candidates: list[Taxon]
    values: np.ndarray
    given: np.ndarray  # bool, as values

    def reweighted(self, weights: np.ndarray) -> Scores:
        """Each given score times its candidate's weight, renormalised per image; an image
        whose weighted scores are all zero keeps its own (search.place: a place that rules
        out every candidate says nothing)."""
        weighted = np.where(self.given, self.values * weights[None, :], 0.0)
        totals = weighted.sum(axis=1, keepdims=True)
        kept = totals[:, 0] > 0
        values = self.values.copy()
        values[kept] = weighted[kept] / totals[kept]
        return Scores(self.candidates, values, self.given)

    def top(self, row: int, k: int) -> list[tuple[Taxon, float]]:
        """The k best given candidates of image `row`, best first."""
        masked = np.where(self.given[row], self.values[row], -np.inf)
        order = np.argsort(-masked, kind="stable")[: min(k, int(self.given[row].sum()))]
        return [(self.candidates[j], float(self.values[row, j])) for j in order]

    def row(self, row: int) -> dict[Taxon, float]:
        given = np.flatnonzero(self.given[row])
        return {self.candidates[j]: float(self.values[row, j]) for j in given}


def scores_from_dicts(rows: Sequence[dict[Taxon, float]]) -> Scores:
    """Scores of images each given as {taxon: score}."""
    candidates = sorted({t for row in rows for t in row}, key=_order)
    column = {t: j for j, t in enumerate(candidates)}
    values = np.zeros((len(rows), len(candidates)), dtype=np.float64)
    given = np.zeros(values.shape, dtype=bool)
    for i, row in enumerate(rows):
        for taxon, score in row.items():
            values[i, column[taxon]] = score
            given[i, column[taxon]] = True
    return Scores(candidates, values, given)


def rank_columns(taxa: Sequence[Taxon], rank: str) -> tuple[list[Taxon], np.ndarray]:
    """The distinct ancestors of `taxa` at `rank` in lineage order, and each taxon's column
    among them (−1: its lineage stops above `rank`)."""
    depth = RANKS.index(rank) + 1
    ancestors = [t.at_rank(rank) if len(t.lineage) >= depth else None for t in taxa]
    distinct = sorted({a for a in ancestors if a is not None}, key=_order)
    column = {a: j for j, a in enumerate(distinct)}
    index = np.array([-1 if a is None else column[a] for a in ancestors], dtype=np.int64)
    return distinct, index


def _summing(index: np.ndarray, columns: int) -> sparse.csr_matrix:
    """[len(index), columns]: 1 where row r adds to column index[r]."""
    from scipy import sparse  # imported when classifying: a search need not pay for scipy

    kept = np.flatnonzero(index >= 0)
    return sparse.csr_matrix((np.ones(len(kept)), (kept, index[kept])),
                             shape=(len(index), columns))  # fmt: skip


def _times(values: np.ndarray, summing: sparse.csr_matrix) -> np.ndarray:
    return np.asarray(summing.T @ np.asarray(values, dtype=np.float64).T).T


def summed_to(probabilities: np.ndarray, taxa: Sequence[Taxon], rank: str) -> Scores:
    """[images, taxa] probabilities summed by lineage up to `rank`: every ancestor given."""
    ancestors, index = rank_columns(taxa, rank)
    values = _times(np.atleast_2d(probabilities), _summing(index, len(ancestors)))
    return Scores(ancestors, values, np.ones(values.shape, dtype=bool))


@dataclass(frozen=True)
class _Level:
    rank: str
    taxa: list[Taxon]  # in descending lineage order: argmax's first maximum is the largest
    summing: sparse.csr_matrix  # [candidates, taxa]
    named: np.ndarray  # [taxa] bool


class Ladder:
    """The ranks from `rank` up to kingdom over one set of candidates, each rank's totals
    a matrix product."""

    def __init__(self, candidates: Sequence[Taxon], rank: str):
        self.levels: list[_Level] = []
        for level in reversed(RANKS[: RANKS.index(rank) + 1]):
            ancestors, index = rank_columns(candidates, level)
            flipped = np.where(index >= 0, len(ancestors) - 1 - index, -1)
            taxa = ancestors[::-1]
            named = np.array([bool(t.name_at(level).strip()) for t in taxa], dtype=bool)
            self.levels.append(_Level(level, taxa, _summing(flipped, len(taxa)), named))

    def deepest_sure(self, scores: Scores, min_confidence: float, skip: np.ndarray
                     ) -> list[tuple[str, Taxon, float] | None]:  # fmt: skip
        """Per image: (rank, taxon, total) at the deepest rank, from `skip[i]` ranks above
        the first, whose best named total among the given candidates' ancestors reaches
        `min_confidence` (ties to the larger lineage); None when no rank's does."""
        found: list[tuple[str, Taxon, float] | None] = [None] * len(scores.values)
        waiting = np.ones(len(scores.values), dtype=bool)
        every = bool(scores.given.all())  # probabilities over all candidates: no mask
        for step, level in enumerate(self.levels):
            rows = np.flatnonzero(waiting & (skip <= step))
            if not len(rows) or not level.named.any():
                continue
            if every:
                totals = _times(scores.values[rows], level.summing)
                reached = level.named[None, :]
            else:
                totals = _times(np.where(scores.given[rows], scores.values[rows], 0.0),
                                level.summing)  # fmt: skip
                reached = (_times(scores.given[rows], level.summing) > 0) & level.named
            totals = np.where(reached, totals, -np.inf)
            best = totals.argmax(axis=1)
            top = totals[np.arange(len(rows)), best]
            for row, j, total in zip(rows, best, top):
                if total >= min_confidence:
                    found[row] = (level.rank, level.taxa[j], float(total))
                    waiting[row] = False
        return found
