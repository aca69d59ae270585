"""The demo model has really learned its tree of life: semantic assertions on new pictures."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bioindex import Collection
from bioindex.demo.draw import draw_dataset
from bioindex.demo.run import write_collection
from bioindex.demo.tree import SPECIES
from bioindex.models import demo_model_dir

HELD_OUT_SEED = 4242  # neither the training seed (0) nor the model card's evaluation seed


def test_tree_has_the_promised_shape() -> None:
    taxa = [s.taxon for s in SPECIES]
    assert len({t.lineage for t in taxa}) == len(SPECIES) >= 40
    assert len({t.kingdom for t in taxa}) >= 2
    assert len({t.lineage[:4] for t in taxa}) >= 4
    assert len({t.lineage[:5] for t in taxa}) >= 8
    assert len({t.common_name for t in taxa}) == len(SPECIES)


def test_drawing_is_deterministic_from_the_seed() -> None:
    first = [np.asarray(image) for _, image in draw_dataset(1, seed=3)[:5]]
    again = [np.asarray(image) for _, image in draw_dataset(1, seed=3)[:5]]
    other = [np.asarray(image) for _, image in draw_dataset(1, seed=4)[:5]]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not any(np.array_equal(a, b) for a, b in zip(first, other))


def test_committed_weights_are_small_and_documented() -> None:
    folder = demo_model_dir()
    weights = folder / "open_clip_pytorch_model.bin"
    assert weights.stat().st_size <= 10 * 1024 * 1024
    card = (folder / "README.md").read_text()
    assert "demos and tests only" in card and "python -m bioindex.demo.train" in card


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory):
    root = write_collection(tmp_path_factory.mktemp("heldout"), per_species=12, seed=HELD_OUT_SEED)
    store = root / "store"
    with Collection.open(store, model="bioclip-demo", create=True, device="cpu") as col:
        summary = col.index([root / "images"], metadata=root / "occurrences.csv", progress=False)
        assert summary.embedded == 12 * len(SPECIES)
    col = Collection.open(store, read_only=True, device="cpu")
    yield col
    col.close()


def _labels(col: Collection, hits) -> list[dict]:
    rows = col.store.rows([h.image_id for h in hits])
    return [rows[h.image_id] for h in hits]


def test_species_text_search_precision(held_out: Collection) -> None:
    precisions = []
    for species in SPECIES:
        hits = held_out.search_text(species.taxon.caption("taxonomic"), k=10)
        rows = _labels(held_out, hits)
        precisions.append(np.mean([r["scientific_name"] == species.name for r in rows]))
    assert np.mean(precisions) >= 0.8, np.mean(precisions)


@pytest.mark.parametrize("rank", ["genus", "family"])
def test_higher_taxon_prefix_search_precision(held_out: Collection, rank: str) -> None:
    taxa = {s.taxon.at_rank(rank) for s in SPECIES}
    precisions = []
    for taxon in taxa:
        rows = _labels(held_out, held_out.search_text(taxon.caption("taxonomic"), k=10))
        precisions.append(np.mean([r[rank] == taxon.name_at(rank) for r in rows]))
    assert np.mean(precisions) >= 0.8, (rank, np.mean(precisions))


def test_image_neighbours_share_species(held_out: Collection) -> None:
    ids = [r[0] for r in held_out.store.con.execute(
        "SELECT image_id FROM images ORDER BY image_id").fetchall()]  # fmt: skip
    rows = held_out.store.rows(ids)
    shares = []
    for image_id in ids[::3]:
        hits = held_out.search_id(image_id, k=10)
        same = [rows[h.image_id]["scientific_name"] == rows[image_id]["scientific_name"]
                for h in hits]  # fmt: skip
        shares.append(np.mean(same))
    assert np.mean(shares) >= 0.8, np.mean(shares)


def test_a_wrong_label_would_fail(held_out: Collection) -> None:
    """Guard against a vacuous pass: querying with a sibling's name finds the sibling."""
    a, b = SPECIES[0], SPECIES[1]  # same genus, different species
    rows = _labels(held_out, held_out.search_text(a.taxon.caption("taxonomic"), k=10))
    assert np.mean([r["scientific_name"] == b.name for r in rows]) < 0.5


def test_demo_command_runs_offline_and_fast(tmp_path: Path) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "bioindex.cli", "demo", "--dir", str(tmp_path / "d")],
        capture_output=True, text=True, timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 180
    out = result.stdout
    assert "Rubrostria oculatus" in out and "score" in out and "images/" in out
    assert out.count("correct)") == 4
