"""Few-shot identification: a classifier trained on the store's own labelled images.

A collection's own pictures (its light, its mounting, its camera) are the best training set
for its look. Two heads, both linear maps over centred, L2-normalised image vectors:

- few-shot: SimpleShot's nearest centroid (Wang et al., 2019): subtract the store's mean
  vector, normalise, average each species' vectors and normalise again; the logits are the
  cosines to those centroids. This is the 1- and 5-shot protocol of the BioCLIP paper.
- linear-probe: multinomial logistic regression (scikit-learn) on the same features.

Probabilities are softmax(T · logits) with T fitted on held-out folds of the labelled images
(calibration.fit_temperature), to the top answer's log loss (calibration.top_label_log_loss:
the answer and confidence a curator is shown; on the demo world's five 5-shot stores × three
query draws it took the centroid head's pooled ECE from 0.034 under the NLL to 0.021); with
too few repeated labels to hold any out, a documented default. An image unlike every
labelled species is answered at genus by a third linear map, shrinkage linear discriminant
analysis over the genera (scikit-learn), whose temperature is fitted on labelled images of
species held out of its training.

A trained head is cached in the store (heads/), keyed by model, method and the labelled
rows, so it is retrained exactly when a label (or an image) changes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bioindex.errors import BioindexError, Remedy
from bioindex.search.bursts import photo_groups
from bioindex.search.calibration import fit_temperature, softmax, top_label_log_loss
from bioindex.search.filters import (
    BLANK,
    Filter,
    blank_filter,
    common_name_key,
    common_names_filter,
    labelled_filter,
)
from bioindex.search.labels import default_cache_root, taxon_from_row
from bioindex.store import Store
from bioindex.store.layout import HEADS_DIR
from bioindex.taxonomy import Taxon, make_taxon, spellings

log = logging.getLogger(__name__)

FEW_SHOT_METHODS = ("few-shot", "linear-probe")
# Used when no species has two labelled images to hold one out. few-shot: the temperature
# fitted on the demo world's 5-shot stores (benchmarks/identify.py: 17.6-19.5 over five
# draws, mean 18.8); linear-probe: its own probabilities as scikit-learn fits them.
DEFAULT_TEMPERATURE = {"few-shot": 18.8, "linear-probe": 1.0}
FOLDS = 5
MIN_HELD_OUT = 10  # fewer held-out rows than this fit a temperature to noise
PROBE_C = 10.0  # inverse L2 strength; unit-length features need a weak penalty
# What a store of a million labelled images (TreeOfLife shards) may cost. A temperature is
# fitted on at most this many held-out images' [images × species] logits (all of them took
# 6.4 GB and 6.5 minutes at 100k images of 3,000 species); every held-out image still
# counts in the typical cosines (held_out_own_cosines).
CALIBRATION_ROWS = 4096
GENUS_ROWS = 64  # images per genus the genus discriminant learns from, at most
# images × species a linear probe may train on: scikit-learn fits it six times (five folds
# to calibrate), each pass over the data costing images × species × dim; 20,000 images of
# 600 species took 46 s here.
PROBE_BUDGET = 50_000_000
# An image is unlike every labelled species when, for every species, its cosine to the
# species' centroid less that species' typical cosine (typical_cosines) is below what this
# share of held-out labelled images had: the species is not answered (benchmarks/
# identify.py, open set). Per species, because species differ in how tight they are: on
# the demo world's open set the raw nearest cosine said "unknown" for 70% of unlabelled
# species' images at 90% of known ones kept (oracle threshold), the typical-relative one
# for 78%. The share is the widest that keeps 90% of known species named on the
# benchmark's store, over four query draws: with typical cosines shrunk, 0.125 → 80.0%
# unknown / 91.5% kept, 0.135 → 80.2% / 91.1%, 0.14 → 81.5% / 90.2% (unshrunk, 0.125:
# 79.8% / 90.3%). Other draws of the store keep fewer (86-88% at 0.14; docs/benchmarks.md):
# the share is fitted on 190 held-out images. Over 20 draws of the store 0.14 keeps 86.6% and
# says "unknown" for 82.8%; 0.09 would keep 90.8% but name 22% of unlabelled species'
# photos as a labelled one (17% at 0.14), and a wrong species misleads more than a rank up.
# The known photos kept are about 1 - share whatever the labelled pictures per species
# (5, 10, 20: benchmarks/novelty_share.py); 0.10 meets both of #19's targets on the
# average store, 0.14 on the benchmark's.
NOVELTY_QUANTILE = 0.14
# An image unlike every labelled species is unlike every labelled genus too when it is
# farther from every genus' mean (Mahalanobis, the genus discriminant's covariance) than
# this share of labelled images of species held out of the discriminant: answered from
# the family up. Measured on the demo world's open genera (benchmarks/identify.py).
GENUS_NOVELTY_QUANTILE = 0.9
HEAD_VERSION = 12
# A cached head is trained again once the store has grown or shrunk by about this factor:
# the store's mean, which SimpleShot centres by, has moved (new labels always retrain).
MEAN_DRIFT = 1.25
NAME_SPECIES = Remedy(
    python="index the images with metadata= (a scientific name per image), or give train= "
    "a folder of labelled images",
    http="index the images with --metadata FILE, or use method=zero-shot",
    cli=(("--train", "index the images with --metadata FILE (a scientific name per image), "
          "or give --train FOLDER (a subfolder of images per species)"),
         ("", "index the images with --metadata FILE (a scientific name per image)")),
)


class HeadFormatChanged(ValueError):
    """A cached head written in another format (by another release)."""


@dataclass
class Discriminant:
    """A linear map over the genera (train_genus) and, where it is a discriminant analysis,
    the Gaussians it is made of: the genera's means and their shared covariance, inverted
    (`precision`). None for the genus centroids it falls back to."""

    weight: np.ndarray  # [genera, dim]
    bias: np.ndarray  # [genera]
    means: np.ndarray | None = None  # [genera, dim]; a genus without images: NaN
    precision: np.ndarray | None = None  # [dim, dim]

    def logits(self, features: np.ndarray) -> np.ndarray:
        return features @ self.weight.T + self.bias

    @functools.cached_property
    def _projected(self) -> tuple[np.ndarray, np.ndarray]:
        """(means · precision, each mean's own term) of the genera with images: the part of
        every distance that does not depend on the image (1,000 genera: 0.26 GFLOP)."""
        means = self.means[~np.isnan(self.means[:, 0])]
        projected = means @ self.precision
        return projected, np.einsum("ij,ij->i", projected, means)

    def distances(self, features: np.ndarray) -> np.ndarray:
        """[images]: the squared Mahalanobis distance to the nearest genus' mean."""
        if self.means is None or self.precision is None:
            return np.zeros(len(features), dtype=np.float32)
        projected, centres = self._projected
        own = np.einsum("ij,ij->i", features @ self.precision, features)
        return (own[:, None] - 2.0 * features @ projected.T + centres[None, :]).min(axis=1)


@dataclass
class GenusHead:
    """The genera of a head's species, for images unlike every labelled species: which genus,
    by a discriminant (train_genus) calibrated on species held out of it; and whether the
    image is unlike every labelled genus too (farther from every genus' mean than nearly
    all images of species held out of the discriminant: GENUS_NOVELTY_QUANTILE). Takes
    centred features."""

    genera: list[Taxon]
    discriminant: Discriminant
    temperature: float
    novelty: float = math.inf  # distance beyond which an image is unlike every genus

    def logits(self, features: np.ndarray) -> np.ndarray:
        return self.discriminant.logits(features)

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """[images, genera], calibrated on species the discriminant never saw."""
        return softmax(self.temperature * self.logits(features))

    def unlike(self, features: np.ndarray) -> np.ndarray:
        """Whether each image is unlike every labelled genus."""
        return self.discriminant.distances(features) > self.novelty

    def arrays(self) -> dict[str, np.ndarray]:
        found = self.discriminant
        gaussians = {} if found.means is None or found.precision is None else {
            "genus_means": found.means, "genus_precision": found.precision}
        return {"genus_weight": found.weight, "genus_bias": found.bias, **gaussians}

    def meta(self) -> dict[str, Any]:
        return {"genera": [list(astuple(t)) for t in self.genera],
                "genus_temperature": self.temperature,
                "genus_novelty": None if math.isinf(self.novelty) else self.novelty}

    @classmethod
    def from_saved(cls, data: Any, meta: dict[str, Any]) -> GenusHead:
        genera = [make_taxon(row[:7], row[7]) for row in meta["genera"]]
        novelty = meta.get("genus_novelty")
        found = Discriminant(data["genus_weight"], data["genus_bias"],
                             data["genus_means"] if "genus_means" in data else None,
                             data["genus_precision"] if "genus_precision" in data else None)
        return cls(genera, found, float(meta["genus_temperature"]),
                   math.inf if novelty is None else float(novelty))


@dataclass
class Head:
    """A trained linear classifier over the store's labelled species; or, in a store whose
    catalog names no taxa but calls its images by common names (a camera trap's "zebra"),
    over those names: taxa with a common name and no lineage, and no genus to back off to
    (free_labels)."""

    method: str
    taxa: list[Taxon]
    mean: np.ndarray  # [dim]: the store's mean vector, subtracted first
    weight: np.ndarray  # [species, dim]
    bias: np.ndarray  # [species]
    temperature: float
    calibrated: bool  # T fitted on held-out labelled images (False: DEFAULT_TEMPERATURE)
    examples: int  # labelled images it was trained on
    centroids: np.ndarray  # [species, dim]: unit means of centred features (novelty)
    novelty: float  # likeness below which an image is unlike every species
    typical: np.ndarray  # [species]: a held-out labelled image's usual cosine to its centroid
    genus: GenusHead | None  # for images unlike every species (None: free labels)

    def __post_init__(self) -> None:
        index = {g: i for i, g in enumerate(self.genera)}
        self.species_genus = np.array([index[t.at_rank("genus")] for t in self.taxa]
                                      if self.genus is not None else [], dtype=np.int64)

    @property
    def free_labels(self) -> list[str] | None:
        """The common names it tells apart, when its classes are those (not taxa)."""
        return [t.common_name for t in self.taxa] if self.genus is None else None

    @property
    def genera(self) -> list[Taxon]:
        return self.genus.genera if self.genus is not None else []

    def likeness(self, vectors: np.ndarray) -> np.ndarray:
        """[images]: the most a species' centroid cosine exceeds its typical one, among the
        species of the image's likeliest genus. Restricted so that an unlabelled species is
        not vouched for by another genus' species that shares its detail (on the demo
        world's open set: 85% / 73% "unknown" at 90% kept on two query draws, against 78% /
        69% over all species; docs/benchmarks.md)."""
        features = centred(np.atleast_2d(vectors), self.mean)
        excess = features @ self.centroids.T - self.typical
        if self.genus is None:  # free labels: no genus to narrow the names down by
            return excess.max(axis=1)
        genus = self.genus.logits(features).argmax(axis=1)
        excess[self.species_genus[None, :] != genus[:, None]] = -np.inf
        return excess.max(axis=1)

    def novel(self, vectors: np.ndarray) -> np.ndarray:
        """Whether each image is unlike every labelled species (see NOVELTY_QUANTILE)."""
        return self.likeness(vectors) < self.novelty

    def unlike_genera(self, vectors: np.ndarray) -> np.ndarray:
        """Whether each image is unlike every labelled genus (GenusHead.unlike); never, for
        a head over common names."""
        if self.genus is None:
            return np.zeros(len(np.atleast_2d(vectors)), dtype=bool)
        return self.genus.unlike(centred(np.atleast_2d(vectors), self.mean))

    def genus_probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """[images, genera], calibrated on species the discriminant never saw."""
        if self.genus is None:
            raise BioindexError("a head over common names has no genera")
        return self.genus.probabilities(centred(np.atleast_2d(vectors), self.mean))

    def logits(self, vectors: np.ndarray) -> np.ndarray:
        return centred(vectors, self.mean) @ self.weight.T + self.bias

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """[images, species] probabilities, calibrated."""
        return softmax(self.temperature * self.logits(np.atleast_2d(vectors)))

    def save(self, path: Path) -> None:
        meta = {"method": self.method, "temperature": self.temperature,
                "calibrated": self.calibrated, "examples": self.examples,
                "novelty": self.novelty, "taxa": [list(astuple(t)) for t in self.taxa],
                **(self.genus.meta() if self.genus else {}),
                "version": HEAD_VERSION}  # fmt: skip
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        with open(tmp, "wb") as out:
            np.savez(out, mean=self.mean, weight=self.weight, bias=self.bias,
                     centroids=self.centroids, typical=self.typical,
                     **(self.genus.arrays() if self.genus else {}),
                     meta=np.array(json.dumps(meta)))  # fmt: skip
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> Head:
        with np.load(path) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("version") != HEAD_VERSION:
                raise HeadFormatChanged(f"head format {meta.get('version')}, not {HEAD_VERSION}")
            taxa = [make_taxon(row[:7], row[7]) for row in meta["taxa"]]
            return cls(meta["method"], taxa, data["mean"], data["weight"], data["bias"],
                       float(meta["temperature"]), bool(meta["calibrated"]),
                       int(meta["examples"]), data["centroids"], float(meta["novelty"]),
                       data["typical"],
                       GenusHead.from_saved(data, meta) if "genera" in meta else None)


def centred(vectors: np.ndarray, mean: np.ndarray) -> np.ndarray:
    shifted = np.asarray(vectors, dtype=np.float32) - mean
    return shifted / np.maximum(np.linalg.norm(shifted, axis=1, keepdims=True), 1e-12)


def train_linear(method: str, features: np.ndarray, classes: np.ndarray, count: int
                 ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(weight [count, dim], bias [count]) from centred features and class indexes."""
    if method == "few-shot":
        weight = np.zeros((count, features.shape[1]), dtype=np.float32)
        np.add.at(weight, classes, features)
        weight /= np.maximum(np.linalg.norm(weight, axis=1, keepdims=True), 1e-12)
        return weight, np.zeros(count, dtype=np.float32)
    from sklearn.linear_model import LogisticRegression

    present = np.unique(classes)
    model = LogisticRegression(C=PROBE_C, max_iter=2000)
    with warnings.catch_warnings():  # one or two images per species is the point here
        warnings.filterwarnings("ignore", "The number of unique classes", UserWarning)
        model.fit(features, classes)
    return class_rows(model.coef_, model.intercept_, present, count)


def class_rows(coef: np.ndarray, intercept: np.ndarray, present: np.ndarray, count: int
               ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(weight [count, dim], bias [count]) from a scikit-learn linear classifier's fit over
    the `present` class indexes; a class absent from training is never predicted."""
    weight = np.zeros((count, coef.shape[1]), dtype=np.float32)
    bias = np.full(count, -1e4, dtype=np.float32)
    if len(present) == 2:  # scikit-learn keeps one row for two classes: logit(p1) = w·x + b
        weight[present[1]], bias[present[1]] = coef[0], intercept[0]
        bias[present[0]] = 0.0
    else:
        weight[present], bias[present] = coef, intercept
    return weight, bias


def train_genus(features: np.ndarray, genera: np.ndarray, count: int) -> Discriminant:
    """Linear discriminant analysis over the genera, its shared covariance shrunk by
    Ledoit-Wolf, equal priors. The within-genus scatter holds what tells a genus' species
    apart, so the discriminant leans on what they share and an unlabelled species lands in
    its genus: on the demo world's held-out species 76% / 78% right (two query draws),
    against 50% / 58% from the nearest genus centroid."""
    present = np.unique(genera)
    if len(present) < 2:  # one genus: it is the answer
        return Discriminant(np.zeros((count, features.shape[1]), np.float32),
                            np.zeros(count, np.float32))  # fmt: skip
    if len(genera) > len(present) + 1:  # some images to estimate a covariance from
        from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

        model = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto",
                                           priors=np.full(len(present), 1.0 / len(present)))
        with warnings.catch_warnings():  # a genus of one image has no covariance of its own
            warnings.filterwarnings("ignore", "Only one sample available", UserWarning)
            model.fit(features, genera)
        weight, bias = class_rows(model.coef_, model.intercept_, present, count)
        if np.any(weight[present]):  # all zero when no image differs from its genus' mean
            means = np.full((count, features.shape[1]), np.nan, dtype=np.float32)
            means[present] = model.means_
            precision = np.linalg.inv(model.covariance_).astype(np.float32)
            return Discriminant(weight, bias, means, precision)
    # The genera's centroids, scaled so that the fallback T of 1 is the centroid head's own.
    weight = train_linear("few-shot", features, genera, count)[0]
    bias = np.where(np.isin(np.arange(count), present), 0.0, -1e4).astype(np.float32)
    return Discriminant(weight * DEFAULT_TEMPERATURE["few-shot"], bias)


def held_out_logits(method: str, features: np.ndarray, classes: np.ndarray, count: int,
                    groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Logits of labelled images from heads trained without them (FOLDS folds; a species'
    groups of photos go round-robin into folds, and one with a single group is never held
    out, so every fold's head knows every species)."""
    fold = species_folds(classes, count, groups)
    if method == "few-shot":
        return centroid_held_out_logits(fold, features, classes, count)
    return fold_logits(fold, features, classes, count,
                       lambda x, y: train_linear(method, x, y, count))


def centroid_held_out_logits(fold: np.ndarray, features: np.ndarray, classes: np.ndarray,
                             count: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """What the nearest-centroid head, trained on every labelled image, would give new
    photos, estimated from the labelled ones without letting any see itself: an image's
    cosines to the other species' centroids are those of the head itself (their centroids
    never held it), and its own species' is its dot product with the sum of that species'
    images outside its fold, scaled by all / outside to stand for the whole sum — unbiased
    for a new photo's, since each image adds one expected dot product (the species' mean
    pairwise cosine) — over the whole sum's length.

    Held out by fold, every species lost an image: a 5-shot store was calibrated as a
    4-shot one, less sure and less right, and the T fitted short of what new photos need
    (benchmarks/identify.py, five 5-shot stores: 17.9 on average against 18.7 fitted on the
    queries themselves, ECE 0.058 on one store; 18.8 and 0.039 this way)."""
    totals = np.zeros((count, features.shape[1]), dtype=np.float64)
    np.add.at(totals, classes, features)
    sizes = np.bincount(classes, minlength=count)
    lengths = np.maximum(np.linalg.norm(totals, axis=1), 1e-12)
    centroids = (totals / lengths[:, None]).astype(np.float32)
    logits, truth = [], []
    for held, wanted in held_out_folds(fold):
        outside = totals.copy()
        np.subtract.at(outside, classes[held], features[held])
        kept = sizes - np.bincount(classes[held], minlength=count)
        rows = np.flatnonzero(wanted)
        own = classes[rows]
        found = features[rows] @ centroids.T
        dots = np.einsum("ij,ij->i", features[rows], outside[own])
        found[np.arange(len(rows)), own] = dots * sizes[own] / kept[own] / lengths[own]
        logits.append(found)
        truth.append(own)
    if not logits:
        return np.zeros((0, count), np.float32), np.zeros(0, np.int64)
    return np.concatenate(logits), np.concatenate(truth)


def species_folds(classes: np.ndarray, count: int,
                  groups: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """Each labelled image's fold: a species' groups round-robin in order of their first
    image, every image of a group in its group's fold; −1 for a species with a single
    group, never held out, so every fold's head knows every species. `groups` (codes, see
    Catalog.photo_groups): near-copies — a camera-trap burst, the photos of one specimen
    — held out from each other would test the head on what it learnt (three-frame bursts
    of the demo world: T 16.8 → 21.8, and 17% of new photos of known species called unlike
    every one, against 10%). None: every image its own group."""
    if groups is None:
        groups = np.arange(len(classes))
    _, first, inverse = np.unique(np.stack([classes, groups]), axis=1, return_index=True,
                                  return_inverse=True)  # fmt: skip
    inverse = inverse.reshape(-1)
    order = np.argsort(first, kind="stable")  # each (species, group) by its first image
    rank = np.empty(len(first), dtype=np.int64)
    rank[order] = rank_within(classes[first][order])
    groups_per_species = np.bincount(classes[first], minlength=count)
    single = groups_per_species[classes] < 2
    return np.where(single, -1, rank[inverse] % FOLDS)


def held_out_own_cosines(features: np.ndarray, classes: np.ndarray, count: int,
                         groups: np.ndarray | None = None,
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """(cosine, class, row) of every held-out labelled image to its own species' centroid
    trained without its fold, what the novelty test measures new photos against (without
    the [images × species] matrix of held_out_logits)."""
    fold = species_folds(classes, count, groups)
    totals = np.zeros((count, features.shape[1]), dtype=np.float64)
    np.add.at(totals, classes, features)
    cosines, owners, rows_seen = [], [], []
    for f in range(FOLDS):
        held = np.flatnonzero(fold == f)
        if not len(held):
            continue
        inside = totals.copy()
        np.subtract.at(inside, classes[held], features[held])
        unit = (inside / np.maximum(np.linalg.norm(inside, axis=1, keepdims=True), 1e-12)
                ).astype(np.float32)  # fmt: skip
        for start in range(0, len(held), 65536):
            rows = held[start : start + 65536]
            cosines.append(np.einsum("ij,ij->i", features[rows], unit[classes[rows]]))
            owners.append(classes[rows])
            rows_seen.append(rows)
    if not cosines:
        return np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(cosines), np.concatenate(owners), np.concatenate(rows_seen)


def calibration_rows(fold: np.ndarray) -> np.ndarray:
    """Which held-out rows a temperature is fitted on: all of them, or CALIBRATION_ROWS
    spread evenly over them."""
    held = np.flatnonzero(fold >= 0)
    if len(held) > CALIBRATION_ROWS:
        held = held[np.linspace(0, len(held) - 1, CALIBRATION_ROWS).astype(np.int64)]
    chosen = np.zeros(len(fold), dtype=bool)
    chosen[held] = True
    return chosen


def rank_within(groups: np.ndarray) -> np.ndarray:
    """Each item's position among the items of its group, in index order."""
    order = np.argsort(groups, kind="stable")
    ordered = groups[order]
    first = np.ones(len(ordered), dtype=bool)
    first[1:] = ordered[1:] != ordered[:-1]
    start = np.maximum.accumulate(np.where(first, np.arange(len(ordered)), 0))
    rank = np.empty(len(groups), dtype=np.int64)
    rank[order] = np.arange(len(ordered)) - start
    return rank


def held_out_folds(fold: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(held, wanted) for each fold with rows to test: the rows a head is trained without,
    and those of them that calibration_rows chooses to test it on."""
    chosen = calibration_rows(fold)
    for f in range(FOLDS):
        held = fold == f
        if (held & chosen).any():
            yield held, held & chosen


def fold_logits(fold: np.ndarray, features: np.ndarray, targets: np.ndarray, count: int,
                train: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
                ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(logits, targets) of the rows in each fold that calibration_rows chooses, from
    `train` on the rows outside the fold (fold −1: never held out)."""
    logits, truth = [], []
    for held, wanted in held_out_folds(fold):
        weight, bias = train(features[~held], targets[~held])
        logits.append(features[wanted] @ weight.T + bias)
        truth.append(targets[wanted])
    if not logits:
        return np.zeros((0, count), np.float32), np.zeros(0, np.int64)
    return np.concatenate(logits), np.concatenate(truth)


def fit_head(method: str, vectors: np.ndarray, taxa: Sequence[Taxon], mean: np.ndarray,
             groups: Sequence[str] | None = None) -> Head:  # fmt: skip
    """Train `method` on labelled `vectors` (one taxon each) and calibrate it on held-out
    folds that keep each of `groups` (Catalog.photo_groups) whole."""
    if method not in FEW_SHOT_METHODS:
        raise BioindexError(f"unknown few-shot method {method!r}")
    species = sorted(set(taxa), key=lambda t: (t.lineage, t.common_name))
    free = not all(t.lineage for t in species)  # common names, not taxa
    if len(species) < 2:
        what = "common names" if free else "species"
        raise BioindexError(f"method {method} needs labelled images of at least two {what} "
                            f"in the store; it has {len(species)}")  # fmt: skip
    if method == "linear-probe" and len(taxa) * len(species) > PROBE_BUDGET:
        raise BioindexError(f"a linear probe of {len(taxa):,} images of {len(species):,} "
                            f"species would train for hours on a CPU; the few-shot method "
                            f"(nearest centroid) learns from them in seconds")  # fmt: skip
    index = {t: i for i, t in enumerate(species)}
    classes = np.array([index[t] for t in taxa], dtype=np.int64)
    features = centred(vectors, mean)
    codes = None if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    weight, bias = train_linear(method, features, classes, len(species))
    logits, truth = held_out_logits(method, features, classes, len(species), codes)
    calibrated = len(truth) >= MIN_HELD_OUT
    temperature = (fit_temperature(logits, truth, loss=top_label_log_loss) if calibrated
                   else DEFAULT_TEMPERATURE[method])  # fmt: skip
    centroids = train_linear("few-shot", features, classes, len(species))[0]
    novelty = -np.inf  # too few held-out images to say what is typical: nothing is novel
    typical = np.zeros(len(species), dtype=np.float32)
    if calibrated:
        own_cosines, own, rows = held_out_own_cosines(features, classes, len(species), codes)
        typical = typical_cosines(own_cosines, own, len(species),
                                  None if codes is None else codes[rows])  # fmt: skip
        # A species of two images gives both the same cosine (each is the other's centroid):
        # its excess over typical is 0 by construction, and a store of two a species set
        # the bar at 0, calling a third of new photos of its species novel.
        varied = np.bincount(own, minlength=len(species))[own] >= 3
        if varied.sum() >= MIN_HELD_OUT:
            novelty = float(np.quantile((own_cosines - typical[own])[varied],
                                        NOVELTY_QUANTILE))  # fmt: skip
    return Head(method, species, mean.astype(np.float32), weight, bias, temperature,
                calibrated, len(taxa), centroids, novelty, typical,
                None if free else fit_genus(features, classes, species))  # fmt: skip


def fit_genus(features: np.ndarray, classes: np.ndarray, species: Sequence[Taxon]
              ) -> GenusHead:  # fmt: skip
    """The genus part of a head, calibrated on labelled images of species held out of it —
    what an unlabelled species' image meets. A genus' species go round-robin into FOLDS
    folds, each genus starting at its own fold, so that a fold does not hold out the n-th
    species of every genus (alike where names order alike); the species of a genus with
    only one are never held out (their genus would be unknown to the fold)."""
    genera = sorted({t.at_rank("genus") for t in species}, key=lambda t: t.lineage)
    count = len(genera)
    genus_index = {g: i for i, g in enumerate(genera)}
    species_genus = np.array([genus_index[t.at_rank("genus")] for t in species])
    kept = capped_rows(species_genus[classes], GENUS_ROWS, classes)
    features, classes = features[kept], classes[kept]
    alone = np.bincount(species_genus, minlength=count)[species_genus] < 2
    fold = np.where(alone, -1, (rank_within(species_genus) + species_genus) % FOLDS)[classes]
    of_genus = species_genus[classes]
    found = train_genus(features, of_genus, count)
    logits, truth, distances = [], [], []
    for held, wanted in held_out_folds(fold):
        without = train_genus(features[~held], of_genus[~held], count)
        logits.append(without.logits(features[wanted]))
        truth.append(of_genus[wanted])
        distances.append(without.distances(features[wanted]))
    # Discriminant logits are on a Mahalanobis scale (the demo world's T is ~0.15): a wide
    # range for T. Without species to hold out, the discriminant's own posterior (T = 1),
    # and no image is unlike every genus.
    temperature, novelty = 1.0, math.inf
    if sum(map(len, truth)) >= MIN_HELD_OUT:
        temperature = fit_temperature(np.concatenate(logits), np.concatenate(truth),
                                      low=1e-4, high=100.0)  # fmt: skip
        if found.means is not None:
            novelty = float(np.quantile(np.concatenate(distances), GENUS_NOVELTY_QUANTILE))
    return GenusHead(genera, found, temperature, novelty)


def capped_rows(groups: np.ndarray, limit: int, members: np.ndarray) -> np.ndarray:
    """Which rows to keep for at most `limit` of each group, taken in turn from its
    `members` (a genus' species: each one's first image, then each one's second, ...)."""
    order = np.lexsort((np.arange(len(groups)), rank_within(members), groups))
    kept = np.zeros(len(groups), dtype=bool)
    kept[order] = rank_within(groups[order]) < limit
    return kept


def typical_cosines(own_cosines: np.ndarray, own: np.ndarray, count: int,
                    groups: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """[count]: each species' typical held-out cosine to its own centroid — its mean, shrunk
    towards the mean over all species by how much of its spread from that mean is its
    few images' sampling noise (empirical Bayes: weight between / (between + within / n)
    for a species of n held-out images); the mean over all for one with none held out (a
    single labelled image). A 5-shot species' mean of five cosines varies more by its
    draw than species differ: on the demo world the weight is 0.26-0.30, and the novelty
    test's "unknown" for unlabelled species gained 0-2 points at the same share of known
    ones kept (four store draws × four query draws, docs/benchmarks.md). Where species
    truly differ in how tight they are, the weight nears 1 and each keeps its own.
    `groups` (each cosine's photo group, see species_folds): a burst's frames say little
    more than one of them, so a group's mean counts as one image."""
    if groups is not None and len(own_cosines):
        pairs, unit = np.unique(np.stack([own, groups]), axis=1, return_inverse=True)
        unit = unit.reshape(-1)
        own_cosines = (np.bincount(unit, weights=own_cosines)
                       / np.bincount(unit)).astype(np.float32)  # fmt: skip
        own = pairs[0]
    held = np.bincount(own, minlength=count)
    total = np.bincount(own, weights=own_cosines, minlength=count)
    overall = float(own_cosines.mean()) if len(own_cosines) else 0.0
    means = total / np.maximum(held, 1)
    some = held > 0
    # A species of two images gives both the same cosine (each is the other's centroid):
    # no spread of its own to learn from.
    varied = held[own] >= 3
    spare = int(varied.sum() - np.count_nonzero(held >= 3))  # degrees of freedom
    if spare < 1 or some.sum() < 2:  # nothing to tell a species' spread from its noise
        return np.where(some, means, overall).astype(np.float32)
    within = float(np.sum((own_cosines - means[own])[varied] ** 2) / spare)
    between = max(float(np.var(means[some]) - np.mean(within / held[some])), 0.0)
    weight = np.where(some, between / np.maximum(between + within / np.maximum(held, 1),
                                                 1e-12), 0.0)  # fmt: skip
    return (overall + weight * (means - overall)).astype(np.float32)


def labelled_species(store: Store) -> tuple[np.ndarray, list[Taxon]]:
    """(image_ids, taxa) of the live images named to species, by image_id."""
    chosen = labelled_filter("species")
    ids = np.sort(store.ids_where(chosen.sql, chosen.params))
    rows = store.catalog.taxa_of([int(i) for i in ids])
    kept, taxa = [], []
    first: dict[tuple[str, ...], Taxon] = {}  # one class per lineage, whatever its common name
    for image_id in ids:
        taxon = taxon_from_row(rows[int(image_id)])
        if taxon is not None and taxon.rank == "species":
            kept.append(int(image_id))
            taxa.append(first.setdefault(taxon.lineage, taxon))
    return np.asarray(kept, dtype=np.int64), taxa


def labelled_common_names(store: Store) -> tuple[np.ndarray, list[Taxon]]:
    """(image_ids, taxa) of the live images the catalog calls by a common name, each name
    one class (common_name_key) under its most used spelling, by image_id; and the frames
    its records call empty (blank_filter) as one more class, BLANK: telling a camera trap's
    empty frames from its animals is most of the work on its photos."""
    chosen, empty = common_names_filter(()), blank_filter()
    ids = store.ids_where(chosen.sql, chosen.params)
    spelling = {key: Taxon(common_name=name)
                for key, name in spellings(store.catalog.common_names()).items()}
    rows = store.catalog.taxa_of([int(i) for i in ids])
    taxa = [spelling[common_name_key(rows[int(i)][7])] for i in ids]
    blank = store.ids_where(empty.sql, empty.params) if len(ids) else np.zeros(0, np.int64)
    if len(blank) and common_name_key(BLANK) not in spelling:
        ids = np.concatenate([ids, blank])
        taxa += [Taxon(common_name=BLANK)] * len(blank)
    order = np.argsort(ids, kind="stable")
    return ids[order], [taxa[i] for i in order]


def store_mean(store: Store, chunk: int = 65536) -> np.ndarray:
    """The mean of every live vector of the store, read a chunk at a time."""
    ids = store.catalog.live_ids()
    total = np.zeros(store.dim, dtype=np.float64)
    for start in range(0, len(ids), chunk):
        total += store.vectors([int(i) for i in ids[start : start + chunk]]).sum(axis=0)
    return (total / max(len(ids), 1)).astype(np.float32)


def store_head(store: Store, method: str) -> Head:
    """The store's trained head for `method`: from its cache when the labelled images and
    the model are the ones it was trained on, else trained now (and cached)."""
    places = head_places(store, f"{method}-{_key(store, method)}.npz")

    def fit() -> Head:
        ids, taxa = labelled_species(store)
        if not len(ids):  # a camera trap's store: its images' common names are the classes
            ids, taxa = labelled_common_names(store)
        if not len(ids):
            raise BioindexError(f"method {method} learns from the store's images named "
                                "to species (or by common names), and this store has none",
                                remedy=NAME_SPECIES)  # fmt: skip
        # Seconds to minutes (41 s at 100k labelled images), once per change of labels; knn
        # and combined pay it too, for the head's novelty test.
        log.info("training the %s head on %s labelled images (once; kept in the store)",
                 method, f"{len(ids):,}")  # fmt: skip
        return fit_head(method, store.vectors([int(i) for i in ids]), taxa, store_mean(store),
                        photo_groups(store, [int(i) for i in ids]))

    head = cached_head(places, fit)
    for path in places:
        if path.is_file():
            for old in path.parent.glob(f"{method}-*.npz"):  # trained on older labels
                if old != path:
                    with contextlib.suppress(OSError):  # a read-only store keeps them
                        old.unlink()
    return head


def head_places(store: Store, name: str) -> tuple[Path, Path]:
    """Where a head of the store is kept: in the store, or, where the store cannot be
    written (a read-only share), in the user's cache under the store's path — else every
    few-shot command on such a store trained it again (minutes on a large one)."""
    where = hashlib.sha256(str(Path(store.path).resolve()).encode()).hexdigest()[:16]
    return (Path(store.path) / HEADS_DIR / name,
            default_cache_root() / "heads" / where / name)  # fmt: skip


def cached_head(places: Sequence[Path], fit: Callable[[], Head]) -> Head:
    """The head saved at the first of `places` that holds one, or `fit()` saved at the
    first that can be written."""
    for path in places:
        if path.is_file():
            try:
                return Head.load(path)
            except HeadFormatChanged as exc:  # another release wrote it: routine, not a fault
                log.info("retraining the cached head %s (%s)", path.name, exc)
            except (OSError, ValueError, KeyError) as exc:  # a torn or foreign file: retrain
                log.warning("ignoring unreadable cached head %s: %s", path, exc)
    head = fit()
    for path in places:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            head.save(path)
            return head
        except OSError as exc:
            log.info("could not cache the head in %s: %s", path.parent, exc)
    return head  # nowhere to keep it: trained again next time


def training_head_places(store: Store, method: str, key: str) -> tuple[Path, Path]:
    """Where the head trained on a training set outside the store (search.training) is
    kept: named apart from the store's own heads, which are replaced as labels change."""
    return head_places(store, f"train-{method}-{key}.npz")


def _key(store: Store, method: str) -> str:
    """What a head depends on: the model, the labelled images (their bytes and names), and
    the store's size to within MEAN_DRIFT (the mean it is centred by moves as images come).
    Keyed by the generation before, a 1M-image store retrained its head (3 minutes) after
    every run that added a photo."""
    model = store.model
    labelled = labelled_filter("species")
    size = round(math.log(max(store.live_count(), 1)) / math.log(MEAN_DRIFT))
    rows = store.catalog.rows_digest(labelled.sql, labelled.params)
    chosen = labelled
    if rows.startswith("0:"):  # no species: the head learns the common names (and blanks)
        named, empty = common_names_filter(()), blank_filter()
        rows = (f"common names {store.catalog.rows_digest(named.sql, named.params)} "
                f"blank {store.catalog.rows_digest(empty.sql, empty.params)}")
        chosen = Filter([], f"({named.sql}) OR ({empty.sql})", [*named.params, *empty.params])
    rows += f" groups {store.catalog.groups_digest(chosen.sql, chosen.params)}"
    identity = [HEAD_VERSION, method, model.get("weights_sha256"), model.get("preprocess"),
                rows, size]  # fmt: skip
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]
