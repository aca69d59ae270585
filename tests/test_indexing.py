"""Index a folder end to end: real images, real DuckDB, real FAISS, through the CLI and API."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from bioindex import Collection
from bioindex.cli import main
from tests.conftest import assert_index_matches_catalog, draw_images, live_rows, shared


@pytest.fixture(scope="module")
def collection_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    draw_images(folder / "generated", 200, seed=3)
    camera = shared("camera-trap")
    for file in camera.glob("*.jpg"):
        shutil.copy(file, folder / file.name)
    return folder


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, collection_dir: Path, tiny_model: str):
    store = tmp_path_factory.mktemp("stores") / "store"
    result = CliRunner().invoke(
        main, ["index", str(collection_dir), "--store", str(store), "--model", tiny_model, "-q"]
    )
    assert result.exit_code == 0, result.output
    return store, result.output


def test_every_file_is_embedded_or_listed_as_failed(indexed, collection_dir: Path) -> None:
    store, output = indexed
    files = {str(p.resolve()) for p in collection_dir.rglob("*") if p.is_file()}
    with Collection.open(store, read_only=True) as col:
        live = {
            r[0]
            for r in col.store.catalog.query("SELECT uri FROM images WHERE status='live'")[1]
        }
        failed = {f["uri"]: f for f in col.failures()}
    assert live | set(failed) == files
    assert not live & set(failed)
    truncated = failed[str((collection_dir / "african_elephants_truncated_file.jpg").resolve())]
    assert truncated["stage"] == "decode" and "truncated" in truncated["error"]
    assert len(live) == 200 + 13
    assert (f"embedded {len(live)}, unchanged 0, failed 1 (which: bioindex info --failures)"
            in output)
    assert_index_matches_catalog(store)


@pytest.mark.parametrize(
    "name", ["ocelot.jpg", "african_elephants_cmyk.jpg", "generated/group1/img0001.jpg"]
)
def test_search_with_an_indexed_image_finds_it_first(indexed, collection_dir, name) -> None:
    store, _ = indexed
    with Collection.open(store, read_only=True) as col:
        hits = col.search_image(collection_dir / name, k=5)
    mine = [h for h in hits if h.uri == str((collection_dir / name).resolve())]
    # First, or tied with a copy of the same photograph (the CMYK and EXIF-rotated elephants)
    # within float16 storage precision: the index holds what the shards hold.
    assert mine and mine[0].score >= 0.99 and hits[0].score - mine[0].score <= 1e-3
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]


def test_search_commands_print_table_json_csv(indexed, collection_dir) -> None:
    import csv
    import io
    import json

    store, _ = indexed
    runner = CliRunner()
    as_json = runner.invoke(
        main,
        [
            "search",
            "text",
            "a photo of an ocelot",
            "--store",
            str(store),
            "--k",
            "4",
            "--format",
            "json",
        ],
    )
    assert as_json.exit_code == 0, as_json.output
    rows = json.loads(as_json.output)
    assert len(rows) == 4 and {"score", "image_id", "uri", "rank"} <= set(rows[0])
    assert rows[0]["score"] >= rows[-1]["score"]

    image_id = rows[0]["image_id"]
    as_csv = runner.invoke(
        main, ["search", "id", str(image_id), "--store", str(store), "--format", "csv", "-k", "3"]
    )
    parsed = list(csv.DictReader(io.StringIO(as_csv.output)))
    assert len(parsed) == 3 and all(int(r["image_id"]) != image_id for r in parsed)

    table = runner.invoke(
        main,
        ["search", "image", str(collection_dir / "ocelot.jpg"), "--store", str(store), "-k", "2"],
    )
    assert table.exit_code == 0
    # The camera trap's own EXIF dates fill event_date: a plain folder still has a "when".
    assert table.output.splitlines()[0].split() == ["rank", "score", "image_id", "event_date",
                                                    "path"]  # fmt: skip
    assert "ocelot.jpg" in table.output.splitlines()[1]

    info = runner.invoke(main, ["info", "--store", str(store), "--format", "json"])
    data = json.loads(info.output)
    assert data["images_live"] == data["index_ntotal"] == 213
    assert data["failures"] == 1 and data["dim"] == 32 and data["last_run"]["embedded"] == 213


def test_rerun_touch_and_delete(tmp_path: Path, tiny_model: str) -> None:
    photos = tmp_path / "photos"
    paths = draw_images(photos, 120, seed=5)
    store = tmp_path / "store"
    with Collection.open(store, model=tiny_model, create=True) as col:
        started = time.perf_counter()
        first = col.index([photos], progress=False)
        first_seconds = time.perf_counter() - started
        assert first.embedded == 120

        started = time.perf_counter()
        again = col.index([photos], progress=False)
        again_seconds = time.perf_counter() - started
        assert (again.embedded, again.unchanged, again.deleted) == (0, 120, 0)
        assert again_seconds < 0.1 * first_seconds, (again_seconds, first_seconds)

        for path in paths[:3]:
            stat = path.stat()
            os.utime(path, (stat.st_atime, stat.st_mtime + 10))
        touched = col.index([photos], progress=False)
        assert (touched.embedded, touched.unchanged) == (3, 117)

        gone = paths[10]
        hit = col.search_image(gone, k=1)[0]
        assert hit.uri == str(gone.resolve())
        gone.unlink()
        deleted = col.index([photos], progress=False)
        assert (deleted.embedded, deleted.deleted) == (0, 1)
        uris = [h.uri for h in col.search_vector(col.store.vectors([hit.image_id - 1])[0], k=200)]
        assert str(gone.resolve()) not in uris and len(uris) == 119
    assert_index_matches_catalog(store)


def test_a_moved_folder_is_not_embedded_again(tmp_path: Path, tiny_model: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder renamed (or a drive mounted elsewhere) and indexed again: every photo was
    embedded again and stored twice, the old row's file gone, and the catalog's names were
    left behind on it. Now its rows move with their vectors and names; a copy (the old
    file still there) is a new image; a subfolder renamed under the scanned folder moves
    rather than being deleted and embedded; a failed file's old failure goes with it."""
    photos = tmp_path / "photos"
    paths = draw_images(photos / "a", 6, seed=21) + draw_images(photos / "b", 4, seed=22)
    meta = tmp_path / "meta.csv"
    meta.write_text(f"file,scientificName\n{paths[0].relative_to(photos)},Leopardus pardalis\n")
    store = tmp_path / "s"
    with Collection.open(store, model=tiny_model, create=True) as col:
        assert col.index([photos], metadata=meta, progress=False).embedded == 10
        before = col.search_image(paths[0], k=1)[0]
        embedded_by = col.store.rows([before.image_id])[before.image_id]["run_id"]
    moved = tmp_path / "moved"
    photos.rename(moved)
    with Collection.open(store) as col:
        with monkeypatch.context() as patched:  # nothing to embed: no model is loaded
            patched.setattr("bioindex.collection.load_model", _no_model)
            summary = col.index([moved], progress=False)
        assert (summary.embedded, summary.moved, summary.deleted) == (0, 10, 0), summary
        assert "moved 10" in summary.line()
        there = moved / paths[0].relative_to(photos)
        after = col.search_image(there, k=1)[0]
        assert after.uri == str(there.resolve())
        assert after.metadata.get("scientific_name") == "Leopardus pardalis"
        assert after.score == pytest.approx(before.score, abs=1e-6)
        # The same image: its id (an archive's identifier, a saved result's) is kept, and
        # the run that embedded it (and read its EXIF).
        assert after.image_id == before.image_id
        assert col.store.rows([after.image_id])[after.image_id]["run_id"] == embedded_by
        assert col.store.live_count() == 10 and col.store.info()["images_deleted"] == 0
        (moved / "b" / "broken.jpg").write_bytes(b"not an image")
        assert col.index([moved], progress=False).failed == 1
    again = tmp_path / "again"
    moved.rename(again)
    with Collection.open(store) as col:
        summary = col.index([again], progress=False)
        assert (summary.embedded, summary.moved, summary.failed) == (0, 10, 1), summary
        # The broken file failed at its new path; its old failure is forgotten.
        assert [f["uri"] for f in col.store.failures()] == [str(again / "b" / "broken.jpg")]
        (again / "b").rename(again / "c")  # renamed under the folder scanned
        renamed = col.index([again], progress=False)
        assert (renamed.embedded, renamed.moved, renamed.deleted) == (0, 4, 0), renamed
        shutil.copytree(again / "c", tmp_path / "copy")
        copied = col.index([tmp_path / "copy"], progress=False)
        assert (copied.embedded, copied.moved) == (4, 0), copied
        assert col.store.live_count() == 14
    assert_index_matches_catalog(store)


def test_a_moved_webdataset_shard_keeps_its_members(tmp_path: Path, tiny_model: str) -> None:
    """A TreeOfLife-style shard moved to another disk: its members (shard.tar#key) are the
    stored images, found by their bytes where the old shard is gone."""
    import tarfile

    paths = draw_images(tmp_path / "photos", 3, seed=31)
    shard = tmp_path / "a" / "shard-000.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w") as tar:
        for path in paths:
            tar.add(path, arcname=f"{path.stem}.{path.suffix[1:]}")
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as col:
        assert col.index([shard], progress=False).embedded == 3
        ids = sorted(col.store.catalog.live_ids().tolist())
        (tmp_path / "b").mkdir()
        moved = shard.rename(tmp_path / "b" / shard.name)
        summary = col.index([moved], progress=False)
        assert (summary.embedded, summary.moved) == (0, 3), summary
        rows = col.store.rows(ids)
        assert sorted(rows) == ids and all(r["uri"].startswith(f"{moved}#") for r in rows.values())


def test_which_stored_files_are_gone(tmp_path: Path) -> None:
    from bioindex.indexer.moves import Listings

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"1")
    (tmp_path / "t.tar").write_bytes(b"")
    present = Listings()
    assert not present.gone(str(tmp_path / "a" / "x.jpg"))
    assert present.gone(str(tmp_path / "a" / "y.jpg"))
    assert present.gone(str(tmp_path / "b" / "x.jpg"))  # its folder is gone
    assert not present.gone(f"{tmp_path / 't.tar'}#in/x.jpg")  # its archive is there
    assert present.gone(f"{tmp_path / 'u.tar'}#x.jpg")
    assert not present.gone("https://example.org/x.jpg")
    assert len(present.names) <= 4  # one listing a folder, not a stat a file


def _no_model(*args, **kwargs):
    raise AssertionError("a model was loaded")


def test_touched_files_keep_their_image_id(tmp_path: Path, tiny_model: str) -> None:
    photos = tmp_path / "photos"
    paths = draw_images(photos, 6, seed=8)
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as col:
        col.index([photos], progress=False)
        before = col.search_image(paths[0], k=1)[0].image_id
        os.utime(paths[0], (1, 1))
        col.index([photos], progress=False)
        after = col.search_image(paths[0], k=1)[0]
        assert after.image_id == before and after.score >= 0.99
    assert_index_matches_catalog(tmp_path / "s")


def test_file_that_turns_unreadable_leaves_results(tmp_path: Path, tiny_model: str) -> None:
    photos = tmp_path / "photos"
    paths = draw_images(photos, 5, seed=9)
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as col:
        col.index([photos], progress=False)
        paths[1].write_bytes(b"not an image any more")
        summary = col.index([photos], progress=False)
        assert (summary.failed, summary.deleted) == (1, 1)
        assert col.store.live_count() == 4
        assert [f["uri"] for f in col.failures()] == [str(paths[1].resolve())]
        # Fixed again: it comes back.
        draw_images(photos, 5, seed=9)
        assert col.index([photos], progress=False).embedded == 5
        assert col.store.live_count() == 5 and col.failures() == []
    assert_index_matches_catalog(tmp_path / "s")


def test_other_model_is_refused(
    tmp_path: Path, tiny_model: str, other_tiny_model: str, tmp_path_factory
) -> None:
    photos = tmp_path / "photos"
    draw_images(photos, 4, seed=1)
    store = tmp_path / "s"
    runner = CliRunner()
    assert (
        runner.invoke(
            main, ["index", str(photos), "-s", str(store), "-m", tiny_model, "-q"]
        ).exit_code
        == 0
    )
    for other in (other_tiny_model, _same_arch_other_weights(tmp_path_factory)):
        result = runner.invoke(main, ["index", str(photos), "-s", str(store), "-m", other])
        assert result.exit_code == 1
        assert result.output.startswith("error: store") and "was built with model" in result.output
        assert len(result.output.strip().splitlines()) == 1
        query = runner.invoke(main, ["search", "text", "x", "-s", str(store), "-m", other])
        assert query.exit_code == 1 and "was built with model" in query.output


def _same_arch_other_weights(tmp_path_factory) -> str:
    from bioindex.tiny import make_tiny_model

    return "local-dir:" + str(make_tiny_model(tmp_path_factory.mktemp("m") / "w", seed=42))


def test_build_index_tunes_on_the_pictures_given(indexed, tmp_path: Path) -> None:
    store, _ = indexed
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    draw_images(tmp_path / "new" / "photos", 30, seed=9)
    (tmp_path / "new" / "notes.txt").write_text("not an image")
    result = CliRunner().invoke(main, ["build-index", "--store", str(copy), "--kind", "hnsw",
                                       "--tune-on", str(tmp_path / "new"), "-q"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "tuned on 30 pictures given" in result.output
    with Collection.open(copy, read_only=True) as col:
        built = col.store.index_spec.built
    assert built["tuned_on"] == "pictures given" and built["queries"] == 30
    assert built["ntotal"] == live_rows(copy)  # nothing held out, nothing lost
    missing = CliRunner().invoke(main, ["build-index", "--store", str(copy),
                                        "--tune-on", str(tmp_path / "nowhere")])  # fmt: skip
    assert missing.exit_code == 2 and "does not exist" in missing.output
    one = CliRunner().invoke(main, ["build-index", "--store", str(copy), "--kind", "hnsw",
                                    "--tune-on", str(next((tmp_path / "new").rglob("*.jpg"))),
                                    "-q"])  # fmt: skip
    assert "tuned on 1 picture given" in one.output, one.output
