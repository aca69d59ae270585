"""The demo model has really learned its tree of life: semantic assertions on new pictures."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bioindex import Collection
from bioindex.demo.draw import draw_dataset
from bioindex.demo.run import write_collection
from bioindex.demo.tree import SPECIES
from bioindex.errors import BioindexError
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
    ids = [r[0] for r in held_out.store.catalog.query(
        "SELECT image_id FROM images ORDER BY image_id")[1]]  # fmt: skip
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


@pytest.mark.slow
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
    assert out.count(" correct") == 4 and "same genus)" in out


def test_demo_bad_arguments_are_one_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from bioindex.cli import main

    (tmp_path / "file").write_text("x")
    for args, message in ((["--dir", str(tmp_path / "file")], "is a file"),
                          (["--dir", str(tmp_path / "d"), "--species", "0"], "at least 1")):
        result = CliRunner().invoke(main, ["demo", *args])
        assert result.exit_code == 1 and message in result.output, result.output
        assert result.output.count("\n") == 1


@pytest.fixture(scope="module")
def queries(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, Path]]:
    """New pictures (a seed used nowhere else), 4 per species, with their true names."""
    folder = tmp_path_factory.mktemp("queries")
    out = []
    for number, (species, picture) in enumerate(draw_dataset(4, seed=HELD_OUT_SEED + 1)):
        path = folder / f"q{number:04d}.png"
        picture.save(path)
        out.append((species, path))
    return out


def _top1(predictions, queries, rank: str) -> float:
    best = {}
    for p in predictions:
        best.setdefault(p.file, p)
    return float(np.mean([best[str(path)].taxon.name_at(rank) == s.taxon.name_at(rank)
                          for s, path in queries]))  # fmt: skip


def test_zero_shot_classification_accuracy(held_out: Collection, queries) -> None:
    paths = [p for _, p in queries]
    species = held_out.classify(paths, rank="species", k=1)
    family = held_out.classify(paths, rank="family", k=1)
    assert _top1(species, queries, "species") >= 0.8
    assert _top1(family, queries, "family") >= 0.9


@pytest.mark.slow
def test_knn_beats_zero_shot_on_the_held_out_set(held_out: Collection, queries) -> None:
    paths = [p for _, p in queries]
    zero_shot = _top1(held_out.classify(paths, k=1), queries, "species")
    knn = _top1(held_out.classify(paths, k=1, method="knn"), queries, "species")
    combined = _top1(held_out.classify(paths, k=1, method="combined"), queries, "species")
    assert knn > zero_shot, (knn, zero_shot)
    assert combined >= 0.85


def _colour_cast(image: Image.Image) -> Image.Image:
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) * np.array([1.0, 0.75, 0.45])
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.mark.slow
def test_knn_beats_zero_shot_on_a_collection_with_its_own_look(tmp_path: Path) -> None:
    """A collection photographed under its own (yellow) light, queried with photos taken the
    same way: labelled neighbours share the look, the text labels do not."""
    root = write_collection(tmp_path / "c", per_species=12, seed=HELD_OUT_SEED)
    for path in (root / "images").glob("*.jpg"):
        _colour_cast(Image.open(path)).save(path)
    queries = []
    for number, (species, picture) in enumerate(draw_dataset(4, seed=HELD_OUT_SEED + 1)):
        path = tmp_path / f"q{number:04d}.png"
        _colour_cast(picture).save(path)
        queries.append((species, path))
    paths = [p for _, p in queries]
    with Collection.open(tmp_path / "s", model="bioclip-demo", create=True, device="cpu") as col:
        col.index([root / "images"], metadata=root / "occurrences.csv", progress=False)
        zero_shot = _top1(col.classify(paths, k=1), queries, "species")
        knn = _top1(col.classify(paths, k=1, method="knn"), queries, "species")
    assert knn >= zero_shot + 0.05, (knn, zero_shot)


def test_taxon_search_modes(tmp_path: Path) -> None:
    """Half the pictures carry labels: hybrid shows labelled matches, then look-alikes."""
    root = write_collection(tmp_path / "c", per_species=4, seed=HELD_OUT_SEED + 2)
    csv_path = root / "occurrences.csv"
    lines = csv_path.read_text().splitlines()
    header, rows = lines[0], lines[1:]
    # Strip every taxon field from the odd rows: unlabelled images, as in a fresh batch.
    columns = header.split(",")
    keep = [i for i, c in enumerate(columns) if c not in (
        "scientificName", "kingdom", "phylum", "class", "order", "family", "genus",
        "specificEpithet", "vernacularName", "taxonRank")]  # fmt: skip
    stripped = [r if n % 2 == 0 else ",".join(v if i in keep else "" for i, v in
                                               enumerate(r.split(",")))
                for n, r in enumerate(rows)]  # fmt: skip
    csv_path.write_text("\n".join([header, *stripped]) + "\n")
    target = SPECIES[9]
    with Collection.open(tmp_path / "s", model="bioclip-demo", create=True, device="cpu") as col:
        col.index([root / "images"], metadata=csv_path, progress=False)
        catalog = col.search_taxon(target.name, k=10, mode="catalog")
        assert len(catalog) == 2 and {h.why for h in catalog} == {"catalog species"}
        hybrid = col.search_taxon(target.taxon.common_name, k=4, mode="hybrid")
        assert [h.why for h in hybrid[:2]] == ["catalog species"] * 2
        assert [h.why for h in hybrid[2:]] == ["look-alike", "look-alike"]
        # The look-alikes found semantically are the unlabelled pictures of that species.
        names = {Path(h.uri).name for h in hybrid}
        truth = {f"{r.split(',')[0]}" for n, r in enumerate(rows)
                 if target.name in r}  # fmt: skip
        assert names == truth
        family = col.search_taxon(target.taxon.family, k=20, mode="catalog")
        assert len(family) == 6 * 2  # six species per family, two labelled pictures each
        # A Latin name the catalog does not hold: look-alikes of its caption, never records.
        alike = col.search_taxon("Nonexistens imaginarius", k=3)
        assert len(alike) == 3 and {h.why for h in alike} == {"look-alike"}
        with pytest.raises(BioindexError, match="unknown taxon"):
            col.search_taxon("Nonexistens imaginarius", mode="catalog")


def test_cli_taxon_and_classify(held_out: Collection, queries, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from bioindex.cli import main

    store = str(held_out.store.path)
    runner = CliRunner()
    result = runner.invoke(main, ["search", "taxon", "Rubridae", "-s", store, "-k", "3",
                                  "--where", "institution_code=SYNTH"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "catalog family" in result.output and "SYNTH" in result.output
    species, path = queries[0]
    result = runner.invoke(main, ["classify", str(path), "-s", store, "--rank", "genus",
                                  "-k", "2", "--format", "csv"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == ("file,kingdom,phylum,class,order,family,genus,"
                                             "score,answer,answer_rank,answer_score,band")
    assert species.taxon.genus in result.output.splitlines()[1]
    for args, message in (
        (["search", "taxon", "Nonexistens imaginarius", "--mode", "catalog"], "unknown taxon"),
        (["search", "taxon", "oculatus"], "unknown taxon"),  # an epithet alone names nothing
        (["search", "taxon", "Rubridae", "--where", "family"], "malformed filter"),
        (["search", "taxon", "Rubridae", "--where", "family=x' OR '1'='1"], ""),
        (["classify", str(path), "-s", store, "--labels", "only-one"], "comma-separated"),
    ):
        result = runner.invoke(main, [*args, "-s", store] if args[0] == "search"
                               else args)  # fmt: skip
        if message:
            assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
            assert message in result.output
        else:  # an injection attempt is just a value that matches nothing
            assert result.exit_code == 0 and "(no results)" in result.output


def _identification_rows(archive: Path) -> dict[int, tuple[str, str, str]]:
    """image_id → (scientificName, taxonRank, identificationRemarks) of an exported archive."""
    import re
    import zipfile

    with zipfile.ZipFile(archive) as opened:
        lines = opened.read("identification.txt").decode().splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"))) for line in lines[1:]]
    return {int(re.search(r"image_id (\d+)", r["identificationRemarks"])[1]):
            (r["scientificName"], r["taxonRank"], r["identificationRemarks"]) for r in rows}


def test_an_exported_identification_is_what_classify_vouches_for(held_out: Collection,
                                                                  queries, tmp_path: Path) -> None:
    """Before: `export --identify` (and `--from` a saved classify result) wrote each image's
    top species even where classify had answered only its genus ("uncertain") or nothing
    ("unknown"): an archive for GBIF asserted what the classifier would not."""
    import json

    from click.testing import CliRunner

    from bioindex.cli import main

    sure = 0.995
    written = held_out.export(tmp_path / "ids.zip", identify=True, min_confidence=sure)
    ids = [int(i) for i in held_out.store.catalog.live_ids()]
    answers = {int(p.file): p.decision for p in held_out.classify_vectors(
        [str(i) for i in ids], held_out.store.vectors(ids), k=1, min_confidence=sure)}  # fmt: skip
    rows = _identification_rows(tmp_path / "ids.zip")
    assert rows.keys() == {i for i, a in answers.items() if a.band != "unknown"}
    for image_id, (name, rank, remarks) in rows.items():
        assert (name, rank) == (answers[image_id].name, answers[image_id].rank)
        assert answers[image_id].band in remarks
    assert {"genus", "family"} <= {rank for _, rank, _ in rows.values()}  # backed off
    assert written["unidentified"] == len(answers) - len(rows)

    # Free labels the classifier cannot tell apart: "unknown" is left out, and said.
    store = str(held_out.store.path)
    result = CliRunner().invoke(main, ["export", "-s", store, "-o", str(tmp_path / "f.zip"),
                                       "--identify", "--labels", "red,blue",
                                       "--min-confidence", "0.9"])  # fmt: skip
    assert result.exit_code == 0, result.output
    unknown = int(result.output.split("note: ")[1].split(" of the")[0])
    assert 0 < unknown < len(ids)
    assert len(_identification_rows(tmp_path / "f.zip")) == len(ids) - unknown
    # The same labels each in one prompt: export had no --templates, classify had.
    one = CliRunner().invoke(main, ["export", "-s", store, "-o", str(tmp_path / "o.zip"),
                                    "--identify", "--labels", "red,blue", "--templates", "one"])
    assert one.exit_code == 0, one.output
    assert _identification_rows(tmp_path / "o.zip")
    for alone in (["--templates", "one"], ["--identify", "--templates", "one"]):
        refused = CliRunner().invoke(main, ["export", "-s", store, "-o", str(tmp_path / "x.zip"),
                                            *alone])  # fmt: skip
        assert refused.exit_code != 0 and "templates" in refused.output, refused.output

    # A saved classify result hands on its answers, not its top species.
    paths = [str(p) for _, p in queries[:48]]
    saved = CliRunner().invoke(main, ["classify", *paths, "-s", store, "--format", "json",
                                      "--min-confidence", str(sure)])  # fmt: skip
    assert saved.exit_code == 0, saved.output
    result_rows = json.loads(saved.output)
    with Collection.open(tmp_path / "q", model="bioclip-demo", create=True, device="cpu") as col:
        col.index(paths, progress=False)
        images, identifications = col.from_results(result_rows)
        uris = {i: col.store.rows([i])[i]["uri"] for i in images}
    by_uri = {str(Path(r["file"]).resolve()): r for r in result_rows}
    assert len(images) == len(paths)
    assert any(i.rank != "species" for i in identifications)
    for item in identifications:
        row = by_uri[uris[item.image_id]]
        assert (item.scientific_name, item.rank, item.band) == (
            row["answer"], row["answer_rank"], row["band"])
