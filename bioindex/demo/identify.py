"""How far identification can be trusted, measured on the demo world (benchmarks/identify.py
prints these figures; tests/test_identify.py asserts the thresholds).

Every figure comes from real stores built with the demo model and queries drawn from seeds
the stores never saw, through the same Python API a user calls.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from bioindex.collection import Collection, combine_views
from bioindex.demo.tree import SPECIES, Species
from bioindex.demo.world import (
    draw_pictures,
    draw_specimens,
    held_out_genera,
    held_out_species,
    place_in_range,
    write_world,
)
from bioindex.search.calibration import expected_calibration_error, softmax
from bioindex.search.classify import UNKNOWN
from bioindex.search.fewshot import FEW_SHOT_METHODS, centred, labelled_species

STORE_SEED, QUERY_SEED, SPECIMEN_SEED = 101, 202, 303
# Other draws of the labelled store, for figures that depend on one store's few images.
STORE_DRAWS = (STORE_SEED, 505, 606, 707, 808)
QUERY_DRAWS = (QUERY_SEED, 1202, 2202)
OPEN_SET_QUERY_DRAWS = (QUERY_SEED, 1202, 2202, 3202)


def store_draws(count: int) -> tuple[int, ...]:
    """The first `count` draws of the labelled store: STORE_DRAWS, then 1001, 1002, …"""
    if count < 1:
        raise ValueError("at least one draw of the store")
    extra = max(count - len(STORE_DRAWS), 0)
    return (STORE_DRAWS + tuple(range(1001, 1001 + extra)))[:count]


CALIBRATED_METHODS = ("few-shot", "linear-probe", "zero-shot", "combined", "knn")


_DRAWN: set[tuple] = set()  # the worlds written by this process: (folder, setting)


def open_world_store(folder: Path, species: Sequence[Species], shots: int, look: str,
                     device: str = "cpu", seed: int = STORE_SEED,
                     frames: int = 1, clock: bool = False) -> Collection:  # fmt: skip
    """A store of `shots` labelled pictures per species (in `look`), with places, each a
    burst of `frames` frames; the pictures are drawn once per folder and setting (a second
    call reruns the index over unchanged files: nothing to do)."""
    root = folder / "world"
    setting = (str(root), tuple(s.taxon.lineage for s in species), shots, seed, look, frames,
               clock)  # fmt: skip
    # Several figures open the same store, and drawing and writing its pictures again was a
    # third of their time. Only within one process: a work folder kept from a run of other
    # code is drawn again, as that code may draw other pictures.
    if setting not in _DRAWN:
        write_world(root, species, shots, seed, look, frames, clock)
        _DRAWN.add(setting)
    collection = Collection.open(folder / "store", model="bioclip-demo", create=True,
                                 device=device)  # fmt: skip
    collection.index([root / "images"], metadata=root / "occurrences.csv", progress=False)
    return collection


# Queries drawn and embedded, by (model, per species, look, seed, species): every
# store here has the same model, and embedding the same 1,728 pictures again for each of
# several stores was most of the time of the figures over store draws.
_EMBEDDED: dict[tuple, tuple[np.ndarray, list[Species]]] = {}


def query_vectors(collection: Collection, per_species: int, look: str, seed: int = QUERY_SEED,
                  species: Sequence[Species] = SPECIES,
                  ) -> tuple[np.ndarray, list[Species]]:  # fmt: skip
    model = collection.store.model
    key = (model.get("name"), model.get("weights_sha256"), per_species, look, seed,
           tuple(s.taxon.lineage for s in species))  # fmt: skip
    if key not in _EMBEDDED:
        pictures = draw_pictures(species, per_species, seed, look)
        vectors = collection.model.embed_pil([p for _, p in pictures])
        _EMBEDDED[key] = (vectors, [s for s, _ in pictures])
    vectors, truth = _EMBEDDED[key]
    return vectors.copy(), list(truth)


def top1(collection: Collection, vectors: np.ndarray, truth: Sequence[Species], method: str,
         **options: Any) -> float:  # fmt: skip
    names = [str(i) for i in range(len(truth))]
    found = collection.classify_vectors(names, vectors, k=1, method=method, **options)
    return float(np.mean([p.taxon is not None and p.taxon.lineage == s.taxon.lineage
                          for p, s in zip(found, truth)]))  # fmt: skip


def few_shot(look: str, shots: int, per_species: int, workdir: Path) -> dict[str, float]:
    """Top-1 at species of each method on a store of `shots` labelled pictures per species."""
    with open_world_store(workdir / f"{look}-{shots}", SPECIES, shots, look) as collection:
        vectors, truth = query_vectors(collection, per_species, look)
        methods = ("zero-shot", "knn", "few-shot", "linear-probe")
        return {m: top1(collection, vectors, truth, m) for m in methods}


def calibration(look: str, shots: int, per_species: int, workdir: Path) -> dict[str, Any]:
    """ECE on held-out queries of each few-shot head before temperature fitting (few-shot:
    its documented default T; linear-probe: scikit-learn's own probabilities, T = 1) and
    after (T fitted on held-out folds of the store's labelled images); of zero-shot at the
    model's T and the fitted one; of combined as the plain average of zero-shot (fitted)
    and the vote, and with its fitted weights."""
    from bioindex.search.fewshot import DEFAULT_TEMPERATURE

    results: dict[str, Any] = {}
    with open_world_store(workdir / f"{look}-{shots}", SPECIES, shots, look) as collection:
        vectors, truth = query_vectors(collection, per_species, look)
        for method in ("few-shot", "linear-probe"):
            head = collection.head(method)
            index = {t.lineage: i for i, t in enumerate(head.taxa)}
            classes = np.array([index[s.taxon.lineage] for s in truth])
            logits = head.logits(vectors)
            before = DEFAULT_TEMPERATURE[method]
            results[method] = {
                "temperature_before": before, "temperature_fitted": head.temperature,
                "ece_before": expected_calibration_error(softmax(before * logits), classes),
                "ece_fitted": expected_calibration_error(softmax(head.temperature * logits),
                                                         classes),
            }  # fmt: skip
        results["zero-shot"] = _zero_shot_calibration(collection, vectors, truth)
        results["combined"] = _combined_calibration(collection, vectors, truth)
        results["knn"] = _knn_calibration(collection, vectors, truth)
    return results


def _knn_calibration(collection: Collection, vectors: np.ndarray,
                     truth: Sequence[Species]) -> dict[str, float]:  # fmt: skip
    """The neighbour vote weighted at the model's logit scale and at the fitted one."""
    found: dict[str, float] = {"scale_before": collection.logit_scale,
                               "scale_fitted": collection.knn_scale() or collection.logit_scale}
    for key, calibrate in (("before", False), ("fitted", True)):
        probabilities, classes, _ = _catalog_probabilities(collection, vectors, truth,
                                                           calibrate, method="knn")
        found[f"ece_{key}"] = expected_calibration_error(probabilities, classes)
    return found


def calibration_over_stores(look: str, shots: int, per_species: int, workdir: Path,
                            seeds: Sequence[int] = STORE_DRAWS,
                            query_seeds: Sequence[int] = QUERY_DRAWS,
                            methods: Sequence[str] = CALIBRATED_METHODS,
                            ) -> dict[str, Any]:  # fmt: skip
    """ECE of each few-shot head and of zero-shot at its fitted T on the same queries (a draw
    of `per_species` per species for each of `query_seeds`, together), for several draws of
    the labelled store: per draw, and pooled over the draws. A store's T is fitted on its
    labelled images (held-out folds for a head: 240 in a 5-shot store of 48 species), so one
    store's ECE carries that T's sampling error; pooled, the figure is the method's."""
    found: dict[str, Any] = {"store_seeds": list(seeds), "query_seeds": list(query_seeds)}
    pooled: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {m: ([], []) for m in methods}
    for seed in seeds:
        folder = workdir / (f"{look}-{shots}" if seed == STORE_SEED else f"{look}-{shots}-s{seed}")
        with open_world_store(folder, SPECIES, shots, look, seed=seed) as collection:
            drawn = [query_vectors(collection, per_species, look, seed=q) for q in query_seeds]
            vectors = np.concatenate([v for v, _ in drawn])
            truth = [s for _, species in drawn for s in species]
            for method, (probabilities, classes) in pooled.items():
                found_p, found_c = _fitted_probabilities(collection, method, vectors, truth)
                probabilities.append(found_p)
                classes.append(found_c)
    for method, (probabilities, classes) in pooled.items():
        found[method] = {
            "ece_per_store": [expected_calibration_error(p, c)
                              for p, c in zip(probabilities, classes)],
            "ece_pooled": expected_calibration_error(np.concatenate(probabilities),
                                                     np.concatenate(classes)),
        }  # fmt: skip
        found[method]["ece_mean_of_stores"] = float(np.mean(found[method]["ece_per_store"]))
    return found


def _fitted_probabilities(collection: Collection, method: str, vectors: np.ndarray,
                          truth: Sequence[Species]) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """A method's calibrated probabilities of the queries and each query's class."""
    if method in ("zero-shot", "combined", "knn"):
        return _catalog_probabilities(collection, vectors, truth, method=method)[:2]
    head = collection.head(method)
    index = {t.lineage: i for i, t in enumerate(head.taxa)}
    return head.probabilities(vectors), np.array([index[s.taxon.lineage] for s in truth])


def _zero_shot_calibration(collection: Collection, vectors: np.ndarray,
                           truth: Sequence[Species]) -> dict[str, float]:  # fmt: skip
    """Zero-shot over the catalog's species at the model's logit scale and at the
    temperature fitted on the store's labelled images: ECE, and how often an answer
    called confident is wrong."""
    found: dict[str, float] = {"temperature_before": collection.model.logit_scale,
                               "temperature_fitted": collection.zero_shot_temperature()}
    for key, calibrate in (("before", False), ("fitted", True)):
        probabilities, classes, rows = _catalog_probabilities(collection, vectors, truth, calibrate)
        found[f"ece_{key}"] = expected_calibration_error(probabilities, classes)
        confident = [p for p in rows if p.decision.band == "confident" and
                     p.taxon.scientific_name == p.decision.name]  # fmt: skip
        wrong = [p for p in confident if p.taxon.lineage != truth[int(p.file)].taxon.lineage]
        found[f"confident_{key}"] = len(confident) / len(truth)
        found[f"confident_but_wrong_{key}"] = len(wrong) / max(len(confident), 1)
    return found


def _combined_calibration(collection: Collection, vectors: np.ndarray,
                          truth: Sequence[Species]) -> dict[str, Any]:  # fmt: skip
    """combined as it was, the plain average of zero-shot (at its fitted T) and the
    neighbour vote, against combined with its fitted weights: ECE, top-1 and how many
    answers are called confident."""
    zero, classes, _ = _catalog_probabilities(collection, vectors, truth)
    votes = _catalog_probabilities(collection, vectors, truth, calibrate=False,
                                   method="knn")[0]  # the vote as it was averaged
    pooled, _, rows = _catalog_probabilities(collection, vectors, truth, method="combined")
    pool = collection.combined_pool()
    found: dict[str, Any] = {"weights": None if pool is None else [pool.text, pool.votes]}
    for key, probabilities in (("before", 0.5 * zero + 0.5 * votes), ("fitted", pooled)):
        found[f"ece_{key}"] = expected_calibration_error(probabilities, classes)
        found[f"top1_{key}"] = float(np.mean(probabilities.argmax(axis=1) == classes))
        found[f"mean_confidence_{key}"] = float(probabilities.max(axis=1).mean())
    found["confident_fitted"] = len({p.file for p in rows if p.decision.band == "confident"}
                                    ) / len(truth)  # fmt: skip
    return found


def _catalog_probabilities(collection: Collection, vectors: np.ndarray,
                           truth: Sequence[Species], calibrate: bool = True,
                           method: str = "zero-shot") -> tuple[np.ndarray, np.ndarray, list]:
    """A method's probabilities over the catalog's species (one row per query, species
    in lineage order; zero-shot's by default), each query's class, and the predictions."""
    names = [str(i) for i in range(len(truth))]
    rows = collection.classify_vectors(names, vectors, k=len(SPECIES), method=method,
                                       calibrate=calibrate)  # fmt: skip
    labels = sorted(s.taxon.lineage for s in SPECIES)
    probabilities = np.zeros((len(truth), len(labels)))
    for p in rows:
        probabilities[int(p.file), labels.index(p.taxon.lineage)] = p.score
    classes = np.array([labels.index(s.taxon.lineage) for s in truth])
    return probabilities, classes, rows


def bursts(look: str, shots: int, per_species: int, workdir: Path,
           frames: int = 3) -> dict[str, Any]:  # fmt: skip
    """The benchmark's store with each labelled picture a camera trap's burst of `frames`
    frames (demo.world.burst), against the store of single pictures, on the same queries:
    each head's T and ECE, combined's weights and ECE, and how many photos of known species
    few-shot calls unlike every labelled one."""
    found: dict[str, Any] = {}
    for count in (1, frames):
        folder = workdir / (f"{look}-{shots}" if count == 1 else f"{look}-{shots}-f{count}")
        with open_world_store(folder, SPECIES, shots, look, frames=count) as collection:
            vectors, truth = query_vectors(collection, per_species, look)
            figures: dict[str, Any] = {"labelled_images": collection.store.live_count()}
            for method in ("few-shot", "linear-probe", "combined"):
                probabilities, classes = _fitted_probabilities(collection, method, vectors,
                                                               truth)  # fmt: skip
                figures[f"ece_{method}"] = expected_calibration_error(probabilities, classes)
            figures["temperature_few-shot"] = collection.head("few-shot").temperature
            figures["temperature_linear-probe"] = collection.head("linear-probe").temperature
            pool = collection.combined_pool()
            figures["combined_weights"] = [pool.text, pool.votes]
            names = [str(i) for i in range(len(truth))]
            answers = collection.classify_vectors(names, vectors, k=1, method="few-shot")
            figures["novel_known"] = float(np.mean([p.decision.novel for p in answers]))
            figures["species_answered"] = float(np.mean([p.decision.rank == "species"
                                                         for p in answers]))  # fmt: skip
            found["single" if count == 1 else "bursts"] = figures
    found["frames"] = frames
    return found


def open_set(look: str, shots: int, per_species: int, workdir: Path, method: str = "few-shot",
             min_confidence: float | None = None) -> dict[str, float]:  # fmt: skip
    """20% of the species (one per genus at most) are left out of the store's labels."""
    held = held_out_species(0.2)
    known = [s for s in SPECIES if s not in held]
    options = {} if min_confidence is None else {"min_confidence": min_confidence}
    with open_world_store(workdir / f"open-{look}-{shots}", known, shots, look) as collection:
        vectors, truth = query_vectors(collection, per_species, look)
        names = [str(i) for i in range(len(truth))]
        found = collection.classify_vectors(names, vectors, k=1, method=method, **options)
        # knn and combined share the few-shot head's novelty test (Collection.novelty_head).
        head = collection.head(method if method in FEW_SHOT_METHODS else "few-shot")
        features = centred(vectors, head.mean)
        nearest = (features @ head.centroids.T).max(axis=1)
        likeness = head.likeness(vectors)
        genus = head.genus_probabilities(vectors).argmax(axis=1)
        ids, _ = labelled_species(collection.store)
        labelled = centred(collection.store.vectors([int(i) for i in ids]), head.mean)
        nearest_image = (features @ labelled.T).max(axis=1)
    is_held = np.array([s in held for s in truth])
    decisions = [p.decision for p in found]
    unknown, kept = open_set_shares(found, is_held)
    confidence = np.array([p.score for p in found])  # the top species' probability
    genus_answers = [(d, s) for d, s, h in zip(decisions, truth, is_held)
                     if h and d.rank == "genus"]  # fmt: skip
    return {
        "unknown_said_for_held_out": unknown,
        "known_keep_species_answer": kept,
        "known_species_correct": float(np.mean([p.taxon.lineage == s.taxon.lineage
                                                for p, s, h in zip(found, truth, is_held)
                                                if not h])),  # fmt: skip
        "auroc_probability": auroc(confidence[~is_held], confidence[is_held]),
        "auroc_centroid_cosine": auroc(nearest[~is_held], nearest[is_held]),
        "auroc_likeness": auroc(likeness[~is_held], likeness[is_held]),  # what novel() uses
        # Tried as novelty scores, and worse (docs/benchmarks.md):
        "auroc_nearest_labelled_image": auroc(nearest_image[~is_held], nearest_image[is_held]),
        "held_out_answered_at_genus": len(genus_answers) / max(int(is_held.sum()), 1),
        "held_out_genus_right_from_discriminant": float(np.mean(
            [head.genera[g].genus == s.taxon.genus for g, s, h in zip(genus, truth, is_held)
             if h])),
        "genus_accuracy_when_backed_off": float(np.mean(
            [d.name == s.taxon.genus for d, s in genus_answers])) if genus_answers else 0.0,
        "held_out_answered_at_family": float(np.mean(
            [d.rank == "family" for d, h in zip(decisions, is_held) if h])),
        "held_out_said_unknown_at_every_rank": float(np.mean(
            [d.name == UNKNOWN for d, h in zip(decisions, is_held) if h])),
    }  # fmt: skip


def open_set_shares(found: Sequence[Any], is_held: np.ndarray) -> tuple[float, float]:
    """(share of held-out species' queries not answered at species, share of known species'
    queries answered at species): #19 item 2's two figures."""
    at_species = np.array([p.decision.rank == "species" for p in found])
    return float((~at_species[is_held]).mean()), float(at_species[~is_held].mean())


def open_set_over_stores(look: str, shots: int, per_species: int, workdir: Path,
                         seeds: Sequence[int] = STORE_DRAWS,
                         query_seeds: Sequence[int] = OPEN_SET_QUERY_DRAWS,
                         ) -> dict[str, Any]:  # fmt: skip
    """open_set's two shares (few-shot) for several draws of the labelled store, each with
    several query draws: how often #19 item 2 holds on one draw, beside the one store the
    benchmark's other figures use. A store's novelty bar is a quantile of its own 190
    held-out images, so which images a store drew moves both shares."""
    held = held_out_species(0.2)
    known = [s for s in SPECIES if s not in held]
    draws: list[list[tuple[float, float]]] = []
    for seed in seeds:
        folder = workdir / (f"open-{look}-{shots}" if seed == STORE_SEED
                            else f"open-{look}-{shots}-s{seed}")  # fmt: skip
        with open_world_store(folder, known, shots, look, seed=seed) as collection:
            per_store = []
            for query_seed in query_seeds:
                vectors, truth = query_vectors(collection, per_species, look, seed=query_seed)
                names = [str(i) for i in range(len(truth))]
                found = collection.classify_vectors(names, vectors, k=1, method="few-shot")
                per_store.append(open_set_shares(found, np.array([s in held for s in truth])))
            draws.append(per_store)
    shares = np.array(draws)  # [stores, query draws, (unknown, kept)]
    means = shares.mean(axis=1)
    meets = (shares[..., 0] >= 0.8) & (shares[..., 1] >= 0.9)
    return {
        "store_seeds": list(seeds), "query_seeds": list(query_seeds),
        "unknown_said_for_held_out": shares[..., 0].tolist(),
        "known_keep_species_answer": shares[..., 1].tolist(),
        "unknown_mean": float(shares[..., 0].mean()),
        "kept_mean": float(shares[..., 1].mean()),
        "draws_meeting_both": int(meets.sum()), "draws": int(meets.size),
        "stores_meeting_both_on_their_mean": int(((means[:, 0] >= 0.8)
                                                  & (means[:, 1] >= 0.9)).sum()),
    }  # fmt: skip


def open_genera(look: str, shots: int, per_species: int, workdir: Path,
                method: str = "few-shot") -> dict[str, float]:  # fmt: skip
    """Three whole genera (from three families) are left out of the store's labels."""
    held = held_out_genera(3)
    known = [s for s in SPECIES if s not in held]
    with open_world_store(workdir / f"open-genera-{look}-{shots}", known, shots,
                          look) as collection:  # fmt: skip
        vectors, truth = query_vectors(collection, per_species, look)
        names = [str(i) for i in range(len(truth))]
        found = collection.classify_vectors(names, vectors, k=1, method=method)
    decisions = [p.decision for p in found]
    is_held = np.array([s in held for s in truth])
    held_ranks = [d.rank for d, h in zip(decisions, is_held) if h]
    at_family = [(d, s) for d, s, h in zip(decisions, truth, is_held)
                 if h and d.rank == "family"]  # fmt: skip
    return {
        # No rank a label gives is right for these: only backing off to family is.
        "held_out_genera_named_to_a_species": held_ranks.count("species") / len(held_ranks),
        "held_out_genera_named_to_a_genus": held_ranks.count("genus") / len(held_ranks),
        "held_out_genera_family_or_above": float(np.mean(
            [r not in ("species", "genus") for r in held_ranks])),
        "family_right_when_backed_off": float(np.mean(
            [d.name == s.taxon.family for d, s in at_family])) if at_family else 0.0,
        "known_keep_species_answer": float(np.mean(
            [d.rank == "species" for d, h in zip(decisions, is_held) if not h])),
    }  # fmt: skip


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counted half."""
    if not len(positive) or not len(negative):
        return float("nan")
    above = (positive[:, None] > negative[None, :]).mean()
    ties = (positive[:, None] == negative[None, :]).mean()
    return float(above + 0.5 * ties)


def place(look: str, shots: int, per_species: int, workdir: Path, method: str = "few-shot",
          radius_km: float = 500.0) -> dict[str, float]:  # fmt: skip
    """Top-1 with and without --near (the query's own find spot, in its home range); every
    species' two look-alikes (same genus) live in other regions."""
    with open_world_store(workdir / f"{look}-{shots}", SPECIES, shots, look) as collection:
        vectors, truth = query_vectors(collection, per_species, look)
        rng = np.random.default_rng(QUERY_SEED + 1)
        spots = [place_in_range(s, rng) for s in truth]
        without = top1(collection, vectors, truth, method)
        right = 0
        for vector, species, (lat, lon) in zip(vectors, truth, spots):
            prior = collection.place_near(lat, lon, radius_km)
            right += top1(collection, vector[None], [species], method, place=prior) == 1.0
        return {"without_place": without, "with_near": right / len(truth)}


def several_views(look: str, shots: int, per_species: int, workdir: Path,
                  method: str = "few-shot", views: int = 3) -> dict[str, float]:  # fmt: skip
    """Top-1 of each single view, of the views' mean vector, and of summed log-probabilities."""
    with open_world_store(workdir / f"{look}-{shots}", SPECIES, shots, look) as collection:
        specimens = draw_specimens(SPECIES, per_species, views, SPECIMEN_SEED, look)
        truth = [s for s, _ in specimens]
        per_view = [collection.model.embed_pil([v[i] for _, v in specimens]) for i in range(views)]
        singles = [top1(collection, vectors, truth, method) for vectors in per_view]
        mean = np.stack([combine_views(np.stack([pv[j] for pv in per_view]))
                         for j in range(len(truth))])  # fmt: skip
        summed = _summed_log_probabilities(collection, per_view, method)
        right = [s.taxon.lineage == t.taxon.lineage for s, t in zip(summed, truth)]
        return {"best_single_view": max(singles), "single_views": singles,
                "mean_vector": top1(collection, mean, truth, method),
                "summed_log_probabilities": float(np.mean(right))}  # fmt: skip


def bursts_identified(look: str, shots: int, per_species: int, workdir: Path,
                      method: str = "few-shot", frames: int = 3,
                      clock: bool = False) -> dict[str, float]:  # fmt: skip
    """Unnamed camera-trap bursts (`frames` views of one animal, one eventID) indexed into a
    store of `shots` labelled pictures per species, then identified as `export --identify`
    does: each frame alone, and a burst's frames together (by_event). Per frame: the share
    named the right species, and the share named anything at species. `clock`: the frames
    carry no eventID, only the time in their EXIF, as an SD card's do (2 s apart within a
    burst, 5 minutes between bursts)."""
    folder = workdir / (f"{look}-{shots}-bursts" + ("-clock" if clock else ""))
    with open_world_store(folder, SPECIES, shots, look) as collection:
        specimens = draw_specimens(SPECIES, per_species, frames, SPECIMEN_SEED, look)
        (folder / "frames").mkdir(exist_ok=True)
        rows, truth = ["file,eventID"], {}
        start = datetime(2024, 5, 1, 6, 0, 0)
        for number, (kind, views) in enumerate(specimens):
            for frame, view in enumerate(views):
                name = f"b{number:04d}-{frame}." + ("jpg" if clock else "png")
                if clock:
                    taken = start + timedelta(minutes=5 * number, seconds=2 * frame)
                    exif = view.getexif()
                    exif.get_ifd(0x8769)[0x9003] = taken.strftime("%Y:%m:%d %H:%M:%S")
                    view.save(folder / "frames" / name, quality=95, exif=exif)
                else:
                    view.save(folder / "frames" / name)
                rows.append(f"{name},burst-{number}")
                truth[str((folder / "frames" / name).resolve())] = kind.taxon.scientific_name
        (folder / "frames.csv").write_text("\n".join(rows) + "\n")
        collection.index([folder / "frames"], metadata=None if clock else folder / "frames.csv",
                         progress=False)  # fmt: skip
        ids = collection.store.catalog.live_ids_by_uri(list(truth))
        uri_of = {image_id: uri for uri, image_id in ids.items()}
        found: dict[str, float] = {}
        for key, by_event in (("each_frame", False), ("by_event", True)):
            named = {uri_of[i.image_id]: i.scientific_name
                     for i in collection.identify(np.asarray(sorted(uri_of)), method=method,
                                                  by_event=by_event) if i.rank == "species"}
            found[f"{key}_right"] = float(np.mean([named.get(u) == t for u, t in truth.items()]))
            found[f"{key}_named"] = len(named) / len(truth)
        return found


def _summed_log_probabilities(collection: Collection, per_view: Sequence[np.ndarray],
                              method: str) -> list[Species]:  # fmt: skip
    by_lineage = {s.taxon.lineage: s for s in SPECIES}
    total: list[dict[tuple[str, ...], float]] = [{} for _ in range(len(per_view[0]))]
    for vectors in per_view:
        names = [str(i) for i in range(len(vectors))]
        found = collection.classify_vectors(names, vectors, k=len(SPECIES), method=method)
        for p in found:
            sums = total[int(p.file)]
            sums[p.taxon.lineage] = sums.get(p.taxon.lineage, 0.0) + np.log(max(p.score, 1e-12))
    return [by_lineage[max(sums, key=sums.get)] for sums in total]


def evaluate(workdir: str | os.PathLike[str] | None = None, look: str = "slide-film",
             per_species: int = 4, open_set_shots: int = 5,
             store_seeds: Sequence[int] = STORE_DRAWS) -> dict[str, Any]:  # fmt: skip
    """Every figure of benchmarks/identify.py; those over draws of the store use
    `store_seeds`."""
    folder = Path(workdir or tempfile.mkdtemp(prefix="bioindex-identify-"))
    return {
        "look": look, "queries_per_species": per_species,
        "few_shot_1": few_shot(look, 1, per_species, folder),
        "few_shot_5": few_shot(look, 5, per_species, folder),
        "calibration_5": calibration(look, 5, per_species, folder),
        "calibration_5_store_draws": calibration_over_stores(look, 5, per_species, folder,
                                                             store_seeds),  # fmt: skip
        "bursts_5": bursts(look, 5, per_species, folder),
        "open_set_5": open_set(look, open_set_shots, per_species, folder),
        "open_set_5_store_draws": open_set_over_stores(look, open_set_shots, per_species,
                                                       folder, store_seeds),  # fmt: skip
        "open_set_5_knn": open_set(look, open_set_shots, per_species, folder, method="knn"),
        "open_set_5_combined": open_set(look, open_set_shots, per_species, folder,
                                        method="combined"),
        "open_genera_5": open_genera(look, open_set_shots, per_species, folder),
        # Zero-shot names nothing at species under the slide-film look: in true colour.
        "open_set_5_zero_shot_true_colour": open_set("true-colour", open_set_shots,
                                                     per_species, folder, method="zero-shot"),
        "place_1": place(look, 1, per_species, folder),
        "several_views_1": several_views(look, 1, per_species, folder),
        "bursts_identified_1": bursts_identified(look, 1, per_species, folder),
        "bursts_identified_1_clock": bursts_identified(look, 1, per_species, folder, clock=True),
    }  # fmt: skip
