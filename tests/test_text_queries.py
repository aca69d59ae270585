"""Text queries search with a setting tuned on texts, not on pictures.

A text vector lies away from every picture (CLIP's modality gap), among many near-equal
scores, where a graph tuned on pictures finds fewer of the true neighbours. Real vectors
throughout: demo-world pictures and captions through the demo model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bioindex.collection import Collection
from bioindex.demo.draw import draw_organism
from bioindex.demo.tree import SPECIES
from bioindex.index_choice import CHOICE_TIE
from bioindex.search.text_probes import probe_texts
from bioindex.store import ImageRecord

PICTURES = 4096
TARGET = 0.95
SLACK = 0.03  # a tuned setting keeps the target's lower bound on texts it never saw


def _pictures(model, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    kinds = rng.integers(len(SPECIES), size=count)
    return np.concatenate([model.embed_pil([draw_organism(SPECIES[k], rng)
                                            for k in kinds[i : i + 256]])
                           for i in range(0, count, 256)]).astype(np.float32)  # fmt: skip


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain folder's store (no labels) of demo-world pictures' vectors, graph-indexed."""
    path = tmp_path_factory.mktemp("text") / "store"
    with Collection.open(path, model="bioclip-demo", create=True, device="cpu") as collection:
        vectors = _pictures(collection.model, PICTURES, seed=11)
        records = [ImageRecord(f"/photos/p{i}.jpg", None, None, None, None, None, {})
                   for i in range(len(vectors))]  # fmt: skip
        collection.store.commit(records, vectors)
        collection.build_index("hnsw", target_recall=TARGET)
    return path


def _recall(found: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


@pytest.mark.slow
def test_text_queries_meet_the_recall_target_pictures_were_tuned_to(demo_store: Path) -> None:
    with Collection.open(demo_store, read_only=True, device="cpu") as collection:
        store = collection.store
        info = collection.info()
        assert info["index_kind"] == "hnsw"
        text_ef = info["index_search_text"]["efSearch"]
        assert text_ef > info["index_search"]["efSearch"], info
        tuning = info["index_text_tuning"]
        assert tuning["queries"] == len(probe_texts([]))  # no labels: the everyday texts

        # Texts the tuning never saw: the captions of species the store does not name.
        held = [t for t in probe_texts([s.taxon for s in SPECIES]) if t not in probe_texts([])]
        vectors = collection.model.encode_texts(held).astype(np.float32)
        ids, stored = zip(*((i, v) for batch in [store.iter_live_vectors()]
                            for part_ids, part in batch for i, v in zip(part_ids, part)))
        stored_ids, matrix = np.asarray(ids), np.stack(stored)
        truth = stored_ids[np.argsort(-(vectors @ matrix.T), axis=1)[:, :10]]

        as_text = [[h.image_id for h in collection.search_text(t, k=10)] for t in held]
        as_picture = [list(store.search(v[None], 10)[1][0]) for v in vectors]
        assert _recall(as_text, truth) >= TARGET - SLACK
        # What text queries got before: the pictures' setting, well short of the target.
        assert _recall(as_picture, truth) < _recall(as_text, truth) - 0.05


@pytest.mark.slow
def test_name_and_arithmetic_searches_ask_as_text(demo_store: Path) -> None:
    """A Latin name on a store without labels is searched by its caption, and a query sum
    with a text term is text-like: both use the text setting."""
    names = sorted({s.taxon.scientific_name for s in SPECIES})[:24]
    with Collection.open(demo_store, read_only=True, device="cpu") as collection:
        store = collection.store
        differ = 0
        for name in names:
            caption = f"a photo of {name}."
            vector = collection.embed_texts([caption])[0][None]
            as_text = list(store.search(vector, 10, text=True)[1][0])
            differ += as_text != list(store.search(vector, 10)[1][0])
            found = [h.image_id for h in collection.search_taxon(name, k=10, mode="semantic")]
            summed = [h.image_id for h in collection.search_query([caption], k=10)]
            assert found == as_text and summed == as_text, name
        assert differ > 0  # the two settings answer differently: the check can tell them apart


@pytest.mark.slow
def test_auto_weighs_text_queries_as_well_as_pictures(demo_store: Path, tmp_path: Path) -> None:
    """The measured choice tunes every candidate on the text probes too, keeps only those
    meeting the target for both (when any does), and ranks them by both costs."""
    import shutil

    path = tmp_path / "store"
    shutil.copytree(demo_store, path)
    with Collection.open(path, device="cpu") as collection:
        collection.store.build_index("auto", exact_up_to=0, text_probes=collection.text_probes)
        spec = collection.store.index_spec
        candidates = spec.built["candidates"]
        held = [t for t in probe_texts([s.taxon for s in SPECIES]) if t not in probe_texts([])]
        vectors = collection.model.encode_texts(held).astype(np.float32)
        found = [list(collection.store.search(v[None], 10, text=True)[1][0]) for v in vectors]
        ids, stored = zip(*((i, v) for part_ids, part in collection.store.iter_live_vectors()
                            for i, v in zip(part_ids, part)))  # fmt: skip
        truth = np.asarray(ids)[np.argsort(-(vectors @ np.stack(stored).T), axis=1)[:, :10]]
    assert all(c["predicted_text_p50_ms"] is not None for c in candidates)
    eligible = [c for c in candidates if c["met_target"] and c["fits_memory"]]
    if any(c["text_met_target"] for c in eligible):
        eligible = [c for c in eligible if c["text_met_target"]]
    cost = {c["name"]: (c["predicted_p50_ms"] + c["predicted_text_p50_ms"]) / 2 for c in eligible}
    chosen = next(c for c in candidates if c["chosen"])
    # Costs within CHOICE_TIE of the lowest are a tie, won by the smallest index
    # (index_choice.pick); asserting the lowest alone failed where IVF-SQ8 (0.037 ms) won
    # its tie with flat storage (0.033 ms).
    close = [c for c in eligible if cost[c["name"]] <= CHOICE_TIE * min(cost.values())]
    assert chosen in close
    assert chosen["predicted_bytes"] == min(c["predicted_bytes"] for c in close)
    assert chosen["kind"] == spec.kind
    if spec.kind != "flat":
        assert spec.built["text_tuning"]["met_target"]

    assert _recall(found, truth) >= TARGET - SLACK
