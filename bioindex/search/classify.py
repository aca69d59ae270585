"""What is this specimen? Zero-shot over a label set, a vote of labelled neighbours, both, or
a few-shot head trained on the store's own labels — and how far the answer can be trusted.

Zero-shot follows pybioclip: probabilities are softmax(logit_scale · image · labelsᵀ) over the
species labels, then summed by lineage up to the asked rank. The neighbour vote (knn) weighs
each labelled neighbour in the store by its cosine similarity. `combined` pools the two:
softmax(a · cosine + b · vote share), its weights fitted on the store's labelled images
(search.calibration.Pool; over labels of your own, which the store's images cannot fit, the
plain average). few-shot / linear-probe: see search.fewshot.

Every file also gets a decision: the deepest rank, from the asked one upwards, whose best
taxon's probability reaches `min_confidence`, with a band — confident (answered at the asked
rank), uncertain (backed off to a higher rank; the asked rank is unknown) or unknown (no rank
reaches it). A place prior (search.place) re-weights the candidates first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from bioindex.errors import BioindexError
from bioindex.search.calibration import Pool, softmax
from bioindex.search.defaults import DEFAULT_MIN_CONFIDENCE
from bioindex.search.fewshot import FEW_SHOT_METHODS, Head
from bioindex.search.filters import (
    BLANK,
    common_name_key,
    common_names_filter,
    labelled_filter,
)
from bioindex.search.labels import LabelSet, taxon_from_row
from bioindex.search.place import PlacePrior
from bioindex.search.query import nearest_many
from bioindex.search.ranks import Ladder, Scores, scores_from_dicts, summed_to
from bioindex.store import Store
from bioindex.taxonomy import RANKS, Taxon

METHODS = ("zero-shot", "knn", "combined", *FEW_SHOT_METHODS)
DEFAULT_NEIGHBOURS = 20
CONFIDENT, UNCERTAIN, UNKNOWN = "confident", "uncertain", "unknown"
NOVEL_NOTE = "unlike every labelled species"
NEW_GENUS_NOTE = "unlike every labelled genus"


@dataclass(frozen=True)
class Decision:
    """What classify vouches for about one file."""

    name: str  # the answer's name ("unknown" when no rank is answered)
    rank: str  # the rank answered ("" for none, and for a free-text label)
    score: float
    band: str
    novel: bool = False  # unlike every labelled species: the species was not answered
    new_genus: bool = False  # unlike every labelled genus too: nor was the genus
    # The labels name no other taxon at the asked rank: its probability is 1 whatever the
    # photo shows (an ocelot was "Tetraodon fluviatilis, confident, 1.0000" in a store
    # whose one species list names that pufferfish), so it is never called confident.
    alone: bool = False
    basis: str = ""  # answered from more than the file: "with the 3 frames of burst …"

    def to_dict(self) -> dict:
        row = {"answer": self.name, "answer_rank": self.rank,
               "answer_score": round(self.score, 6), "band": self.band}  # fmt: skip
        if self.new_genus:
            row["answer_note"] = NEW_GENUS_NOTE
        elif self.novel:
            row["answer_note"] = NOVEL_NOTE
        elif self.alone:
            row["answer_note"] = f"the only {self.rank} the labels name: nothing to tell it from"
        if self.basis:
            row["answer_basis"] = self.basis
        return row


@dataclass
class Prediction:
    file: str
    score: float
    taxon: Taxon | None = None
    label: str | None = None
    error: str | None = None  # the file could not be read: no prediction
    decision: Decision | None = None  # the file's answer (the same on each of its rows)

    def to_dict(self) -> dict:
        row: dict = {"file": self.file}
        if self.error is not None:
            return {**row, "error": self.error}
        if self.taxon is not None:
            row.update(self.taxon.to_row())
        else:
            row["label"] = self.label
        row["score"] = round(self.score, 6)
        if self.decision is not None:
            row.update(self.decision.to_dict())
        return row


def zero_shot_probabilities(
    image_vectors: np.ndarray, label_vectors: np.ndarray, logit_scale: float
) -> np.ndarray:
    """[images, labels] probabilities."""
    return softmax(logit_scale * (image_vectors @ label_vectors.T))


def by_rank(probabilities: np.ndarray, taxa: Sequence[Taxon], rank: str) -> dict[Taxon, float]:
    """Sum per-species probabilities by lineage up to `rank`."""
    return summed_to(np.asarray(probabilities)[None], taxa, rank).row(0)


def knn_vote(
    store: Store, vector: np.ndarray, rank: str, neighbours: int = DEFAULT_NEIGHBOURS,
    exclude: set[int] | None = None, logit_scale: float = 100.0,
) -> dict[Taxon, float]:  # fmt: skip
    """Share of vote per taxon among the labelled nearest neighbours, each neighbour weighted
    by exp(logit_scale · cosine) — the model's own temperature, so a clearly closer
    neighbour outweighs a crowd of slightly farther ones (plain cosine weights are nearly
    uniform, since all neighbours' cosines are close)."""
    vectors = np.asarray(vector, dtype=np.float32).reshape(1, -1)
    return knn_vote_many(store, vectors, rank, neighbours, [exclude or set()], logit_scale)[0]


def knn_vote_many(
    store: Store, vectors: np.ndarray, rank: str, neighbours: int = DEFAULT_NEIGHBOURS,
    excludes: list[set[int]] | None = None, logit_scale: float = 100.0,
) -> list[dict[Taxon, float]]:  # fmt: skip
    """knn_vote of each vector, the neighbours searched together and their taxa read in
    one query."""
    voted: dict[Taxon, int] = {}  # each taxon a neighbour is of, in the order first met
    cosines, classes = _rank_voters(store, vectors, rank, neighbours, excludes,
                                    lambda taxon: voted.setdefault(taxon, len(voted)))
    shares = vote_shares(cosines, classes, len(voted), logit_scale)
    taxa = list(voted)
    return [{taxa[j]: float(shares[i, j]) for j in dict.fromkeys(classes[i][classes[i] >= 0])}
            for i in range(len(shares))]  # fmt: skip


def knn_votes(store: Store, vectors: np.ndarray, taxa: Sequence[Taxon],
              neighbours: int = DEFAULT_NEIGHBOURS, logit_scale: float = 100.0,
              excludes: list[set[int]] | None = None) -> np.ndarray:  # fmt: skip
    """[images, taxa]: knn_vote at species of each image, as shares of `taxa` (a vote for
    a species not among them is dropped). No image of `excludes[i]` is a neighbour of
    image i: a stored image held out to fit on is not its own nearest neighbour, nor are
    the other frames of its burst."""
    return vote_shares(*species_voters(store, vectors, taxa, neighbours, excludes), len(taxa),
                       logit_scale)  # fmt: skip


def species_voters(store: Store, vectors: np.ndarray, taxa: Sequence[Taxon],
                   neighbours: int = DEFAULT_NEIGHBOURS,
                   excludes: list[set[int]] | None = None,
                   ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(cosines, classes), each [images, neighbours]: each image's labelled nearest
    neighbours and the index in `taxa` of each one's species (-1: none of them, or no
    neighbour), for vote_shares."""
    column = {t.lineage: j for j, t in enumerate(taxa)}
    return _rank_voters(store, vectors, "species", neighbours, excludes,
                        lambda taxon: column.get(taxon.lineage, -1))


def _rank_voters(store: Store, vectors: np.ndarray, rank: str, neighbours: int,
                 excludes: list[set[int]] | None, class_of: Callable[[Taxon], int],
                 ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """species_voters at `rank`: each neighbour named to it, classed by `class_of` of its
    taxon at that rank."""
    found = nearest_many(store, np.asarray(vectors, dtype=np.float32), neighbours, excludes,
                         where=labelled_filter(rank))  # fmt: skip
    rows = store.catalog.taxa_of(sorted({i for pairs in found for _, i in pairs}))
    depth = RANKS.index(rank) + 1

    def classed(image_id: int) -> int:
        taxon = taxon_from_row(rows[image_id])
        if taxon is None or len(taxon.lineage) < depth:
            return -1
        return class_of(taxon.at_rank(rank))

    return _voters(found, classed, neighbours)


def label_voters(store: Store, vectors: np.ndarray, names: Sequence[str],
                 neighbours: int = DEFAULT_NEIGHBOURS, excludes: list[set[int]] | None = None,
                 ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """species_voters over free labels: the nearest images the catalog calls by one of
    `names` (its common names: a camera trap's "zebra"), and which name each is called."""
    named = common_names_filter(names)
    if not len(store.ids_where(named.sql, named.params)):
        raise BioindexError("no image of the store is called by any of the labels (its "
                            "common name), so no neighbour can vote for one")  # fmt: skip
    column = {common_name_key(name): j for j, name in enumerate(names)}
    found = nearest_many(store, np.asarray(vectors, dtype=np.float32), neighbours,
                         excludes, where=named)  # fmt: skip
    rows = store.catalog.taxa_of(sorted({i for pairs in found for _, i in pairs}))
    # A row of the filter without a common name is an empty frame (common_names_filter).
    return _voters(found, lambda i: column.get(common_name_key(rows[i][7] or "") or BLANK, -1),
                   neighbours)  # fmt: skip


def _voters(found: list[list[tuple[float, int]]], class_of: Callable[[int], int],
            neighbours: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    cosines = np.zeros((len(found), max(neighbours, 1)), dtype=np.float64)
    classes = np.full(cosines.shape, -1, dtype=np.int64)
    for i, pairs in enumerate(found):
        for j, (score, image_id) in enumerate(pairs[: cosines.shape[1]]):
            cosines[i, j], classes[i, j] = score, class_of(image_id)
    return cosines, classes


def vote_shares(cosines: np.ndarray, classes: np.ndarray, count: int,
                scale: float) -> np.ndarray:  # fmt: skip
    """[images, count]: each class's share of the vote of the neighbours (species_voters),
    each weighted by exp(scale · cosine) as knn_vote weighs; all zero with no vote."""
    voting = classes >= 0
    top = np.where(voting, cosines, -np.inf).max(axis=1, keepdims=True)
    weights = np.where(voting, np.exp(scale * (cosines - np.where(np.isfinite(top), top, 0))),
                       0.0)  # fmt: skip
    votes = np.zeros((len(cosines), count), dtype=np.float64)
    rows = np.broadcast_to(np.arange(len(cosines))[:, None], classes.shape)
    np.add.at(votes, (rows[voting], classes[voting]), weights[voting])
    totals = votes.sum(axis=1, keepdims=True)
    return np.divide(votes, totals, out=np.zeros_like(votes), where=totals > 0)


def knn_label_votes(store: Store, vectors: np.ndarray, names: Sequence[str],
                    neighbours: int = DEFAULT_NEIGHBOURS, logit_scale: float = 100.0,
                    excludes: list[set[int]] | None = None) -> np.ndarray:  # fmt: skip
    """[images, names]: knn_vote over free labels — among the nearest images the catalog
    calls by one of `names` (its common names: a camera trap's "zebra"), each weighted as
    knn_vote weighs, the share of each name. A row is all zero when no neighbour is found.
    `excludes` as for knn_votes."""
    return vote_shares(*label_voters(store, vectors, names, neighbours, excludes), len(names),
                       logit_scale)  # fmt: skip


def decide(scores: dict[Taxon, float], rank: str, min_confidence: float,
           novel: bool = False, new_genus: bool = False) -> Decision:  # fmt: skip
    """The deepest rank from `rank` upwards whose best taxon (scores summed by lineage)
    reaches `min_confidence` (ranks the taxa leave blank are skipped). A `novel` image
    (unlike every labelled species) is answered from the genus up; one of a `new_genus`
    (unlike every labelled genus too) from the family up."""
    return decisions(scores_from_dicts([scores]), rank, min_confidence, np.array([novel]),
                     np.array([new_genus]))[0]  # fmt: skip


def decisions(scores: Scores, rank: str, min_confidence: float, novel: np.ndarray,
              new_genus: np.ndarray | None = None) -> list[Decision]:  # fmt: skip
    """decide for every image of `scores` at once."""
    if new_genus is None:
        new_genus = np.zeros(len(novel), dtype=bool)
    skip = ((novel & (rank == "species")).astype(np.int64)
            + (new_genus & (rank in ("species", "genus"))).astype(np.int64))  # fmt: skip
    found = Ladder(scores.candidates, rank).deepest_sure(scores, min_confidence, skip)
    return [Decision(UNKNOWN, "", 0.0, UNKNOWN, bool(n), bool(g)) if answer is None
            else Decision(answer[1].name_at(answer[0]), answer[0], answer[2],
                          CONFIDENT if answer[0] == rank else UNCERTAIN, bool(n), bool(g))
            for answer, n, g in zip(found, novel, new_genus)]  # fmt: skip


def _choices(rank: str, labels: LabelSet | None, head: Head | None) -> int | None:
    """How many taxa at `rank` an answer is chosen among; None where the method's
    candidates are not known beforehand (the neighbour vote's) or are free labels (two or
    more, labels_from_strings)."""
    if labels is not None and not labels.has_lineage:
        return None
    taxa = labels.taxa if labels is not None else head.taxa if head is not None else None
    if taxa is None:
        return None
    depth = RANKS.index(rank) + 1
    return len({t.at_rank(rank) for t in taxa if len(t.lineage) >= depth})


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
    head: Head | None = None,
    place: PlacePrior | None = None,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    temperature: float | None = None,
    pool: Pool | None = None,
    novelty: Head | None = None,
    vote_scale: float | None = None,
) -> list[Prediction]:
    """Top-k predictions per image, best first, each carrying its file's decision.
    `temperature` replaces `logit_scale` in zero-shot's softmax (a calibrated one, see
    Collection.zero_shot_temperature); the neighbour vote keeps the model's own. `pool`:
    combined's fitted weights (Collection.combined_pool; None: the plain average), pooling
    at species, then summed by lineage as zero-shot's probabilities are. `novelty`: for
    zero-shot, knn and combined over the store's own names, the store's few-shot head,
    whose test (Head.novel) says which images are unlike every labelled species — answered from the
    genus up, their genus from its discriminant, as few-shot's own are. Without it a
    species missing from the labels is named as its nearest labelled sibling. `vote_scale`:
    the neighbour vote's fitted scale for method knn (Collection.knn_scale; None: the
    model's `logit_scale`)."""
    if rank not in RANKS:
        raise BioindexError(f"unknown rank {rank!r}; choose one of {', '.join(RANKS)}")
    if method not in METHODS:
        raise BioindexError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if not 0.0 <= min_confidence <= 1.0:
        raise BioindexError(f"the minimum confidence must be in [0, 1], got {min_confidence}")
    few_shot = method in FEW_SHOT_METHODS
    if few_shot and head is None:
        raise BioindexError(f"method {method} needs a store with images named to species")
    if few_shot and labels is not None:
        raise BioindexError(f"method {method} learns the store's own labels; a label set of "
                            "your own is for zero-shot")  # fmt: skip
    if method in ("zero-shot", "combined") and (labels is None or label_vectors is None):
        raise BioindexError(f"{method} classification needs a label set")
    if method in ("knn", "combined") and store is None:
        raise BioindexError(f"method {method} needs a store with labelled images")
    free = (labels.names if labels is not None and not labels.has_lineage
            else head.free_labels if few_shot else None)  # fmt: skip
    if free is not None and rank != "species":
        raise BioindexError(f"labels with no lineage (custom labels, a catalog's common "
                            f"names) cannot be summed up to rank {rank}")  # fmt: skip
    if free is not None and place is not None:
        raise BioindexError("custom labels name no taxa a place could have records of")
    # A head over common names does not judge the vote or zero-shot: a camera trap's
    # "blank" is every kind of empty frame, and 7 of 12 new frames were "unlike" its names.
    vouching = novelty is not None and novelty.free_labels is None
    judge = head if few_shot else novelty if vouching else None
    if free is not None:
        return _free_label_predictions(files, image_vectors, free, k, min_confidence, method,
                                       store, neighbours, logit_scale, temperature,
                                       label_vectors, head, pool, judge,
                                       vote_scale)  # fmt: skip

    pooled = method == "combined" and pool is not None
    averaged = method == "combined" and pool is None
    novel = np.zeros(len(files), dtype=bool)
    new_genus = np.zeros(len(files), dtype=bool)
    if judge is not None and judge.free_labels is None:
        novel = judge.novel(image_vectors)
        if novel.any() and rank in ("species", "genus"):  # like a species: like its genus
            new_genus[novel] = judge.unlike_genera(image_vectors[novel])
    alone = _choices(rank, labels, head) == 1
    if few_shot:
        scores = summed_to(head.probabilities(image_vectors), head.taxa, rank)
    elif pooled:
        votes = knn_votes(store, image_vectors, labels.taxa, neighbours, logit_scale)
        scores = summed_to(pool.probabilities(image_vectors @ label_vectors.T, votes),
                           labels.taxa, rank)  # fmt: skip
    elif method == "zero-shot":
        scores = summed_to(zero_shot_probabilities(image_vectors, label_vectors,
                                                   temperature or logit_scale),
                           labels.taxa, rank)  # fmt: skip
    else:
        voted = knn_vote_many(store, image_vectors, rank, neighbours,
                              logit_scale=(vote_scale or logit_scale) if method == "knn"
                              else logit_scale)  # fmt: skip
        if averaged:
            text = summed_to(zero_shot_probabilities(image_vectors, label_vectors,
                                                     temperature or logit_scale),
                             labels.taxa, rank)  # fmt: skip
            voted = [_averaged(text.row(i), votes) for i, votes in enumerate(voted)]
        scores = scores_from_dicts(voted)
    if place is not None:
        scores = scores.reweighted(np.array([place.weight(t) for t in scores.candidates]))
    answers = decisions(scores, rank, min_confidence, novel, new_genus)
    if rank == "species" and novel.any():  # their genus (or family) from the discriminant
        rows = np.flatnonzero(novel)
        genera = summed_to(judge.genus_probabilities(image_vectors[rows]), judge.genera,
                           "genus")  # fmt: skip
        if place is not None:
            genera = genera.reweighted(np.array([place.weight(t) for t in genera.candidates]))
        for row, decision in zip(rows, decisions(genera, rank, min_confidence,
                                                 np.ones(len(rows), dtype=bool),
                                                 new_genus[rows])):  # fmt: skip
            answers[row] = decision
    predictions: list[Prediction] = []
    for i, file in enumerate(files):
        decision = answers[i]
        if alone and decision.band == CONFIDENT:
            decision = replace(decision, band=UNCERTAIN, alone=True)
        predictions.extend(Prediction(file, score, taxon=taxon, decision=decision)
                           for taxon, score in scores.top(i, k))  # fmt: skip
    return predictions


def _averaged(text: dict[Taxon, float], votes: dict[Taxon, float]) -> dict[Taxon, float]:
    """combined without fitted weights: the plain average of the two."""
    return {t: 0.5 * text.get(t, 0.0) + 0.5 * votes.get(t, 0.0) for t in set(text) | set(votes)}


def _free_label_predictions(files: Sequence[str], image_vectors: np.ndarray, names: list[str],
                            k: int, min_confidence: float, method: str, store: Store | None,
                            neighbours: int, logit_scale: float, temperature: float | None,
                            label_vectors: np.ndarray | None, head: Head | None,
                            pool: Pool | None = None, judge: Head | None = None,
                            vote_scale: float | None = None,
                            ) -> list[Prediction]:  # fmt: skip
    """Top-k over labels with no lineage (custom labels, a catalog's common names): the
    answer is the best label when it reaches `min_confidence` (and, where a head over the
    same names judges, the image is like some name's images), else unknown — there is no
    rank to back off to. The neighbour vote counts the neighbours called by the labels."""
    novel = np.zeros(len(files), dtype=bool)
    if judge is not None and judge.free_labels is not None:
        novel = judge.novel(image_vectors)  # unlike the photos of every name
    if method in FEW_SHOT_METHODS:
        probabilities = head.probabilities(image_vectors)
    else:
        probabilities = np.zeros((len(files), len(names)))
        if method != "knn":
            probabilities = zero_shot_probabilities(image_vectors, label_vectors,
                                                    temperature or logit_scale)  # fmt: skip
        if method in ("knn", "combined"):
            votes = knn_label_votes(store, image_vectors, names, neighbours,
                                    (vote_scale or logit_scale) if method == "knn"
                                    else logit_scale)  # fmt: skip
            if method == "knn":
                probabilities = votes
            elif pool is not None:
                probabilities = pool.probabilities(image_vectors @ label_vectors.T, votes)
            else:
                probabilities = 0.5 * probabilities + 0.5 * votes
    predictions: list[Prediction] = []
    for i, file in enumerate(files):
        top = np.argsort(-probabilities[i], kind="stable")[:k]
        best = float(probabilities[i][top[0]])
        decision = (Decision(names[top[0]], "", best, CONFIDENT)
                    if best >= min_confidence and best > 0 and not novel[i]  # 0: no vote
                    else Decision(UNKNOWN, "", 0.0, UNKNOWN, bool(novel[i])))  # fmt: skip
        predictions.extend(Prediction(file, float(probabilities[i][j]), label=names[j],
                                      decision=decision) for j in top)  # fmt: skip
    return predictions
