"""Nothing can brick a store: kills at every write point, corrupt or lost files, full disks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bioindex.cli import main
from bioindex.collection import Collection
from bioindex.store import Store
from tests.cli_process import run_cli
from tests.conftest import assert_index_matches_catalog, draw_images, live_rows

QUERIES = ("a photo", "a red circle", "green")


def _index(photos: Path, store: Path, model: str | None = None, *extra: str,
           env: dict | None = None) -> subprocess.CompletedProcess:  # fmt: skip
    command = ["index", str(photos), "-s", str(store), "--batch-size", "8",
               "--commit-every", "8", "--workers", "0", "-q", *extra]  # fmt: skip
    if model:
        command += ["-m", model]
    return run_cli(command, env=env)


def _rerun(photos: Path, store: Path, model: str | None = None, *extra: str) -> str:
    """An index run in this process (no kill needed: no interpreter to start); its output."""
    args = ["index", str(photos), "-s", str(store), "--batch-size", "8", "--commit-every", "8",
            "--workers", "0", "-q", *extra, *(["-m", model] if model else [])]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return result.output


def _answers(store: Path) -> list[list[tuple[str, float]]]:
    """Top hits (uri, score) of a few text queries and of search-by-image."""
    with Collection.open(store, read_only=True) as col:
        out = [[(h.uri, round(h.score, 4)) for h in col.search_text(q, k=8)] for q in QUERIES]
        _, rows = col.store.catalog.query(
            "SELECT image_id FROM images WHERE status='live' ORDER BY uri LIMIT 1")
        if rows:
            hits = col.search_id(rows[0][0], k=5)
            out.append([(h.uri, round(h.score, 4)) for h in hits])
        return out


def _exactly_once(store: Path, count: int) -> None:
    with Store.open(store, read_only=True) as opened:
        names, rows = opened.catalog.query(
            "SELECT count(*), count(DISTINCT uri), count(DISTINCT image_id) FROM images "
            "WHERE status='live'")  # fmt: skip
    assert rows[0] == (count, count, count)
    assert_index_matches_catalog(store)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> tuple[Path, Path, list]:
    root = tmp_path_factory.mktemp("faults")
    photos = root / "photos"
    draw_images(photos, 150, seed=21)
    store = root / "clean"
    _rerun(photos, store, tiny_model)
    return photos, store, _answers(store)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["after-shard:3", "after-segment:3", "before-switch:5",
                                   "during-compaction", "after-index-file"])  # fmt: skip
def test_index_killed_at_a_write_point(tmp_path: Path, tiny_model: str, clean, point) -> None:
    photos, _, expected = clean
    store = tmp_path / "s"
    killed = _index(photos, store, tiny_model, env={"BIOINDEX_FAULT": point})
    assert killed.returncode == -9, killed.stderr  # it really died there
    for command in (["info"], ["check"], ["search", "text", "a photo"]):
        result = CliRunner().invoke(main, [*command, "-s", str(store)])
        assert result.exit_code == 0, (command, result.output)
    _rerun(photos, store)
    _exactly_once(store, 150)
    got = _answers(store)
    for mine, theirs in zip(got, expected):
        assert mine == theirs, [(a, b) for a, b in zip(mine, theirs) if a != b]


@pytest.mark.slow
def test_build_index_killed_between_index_file_and_record(tmp_path: Path, clean) -> None:
    photos, source, expected = clean
    store = tmp_path / "s"
    shutil.copytree(source, store)
    result = run_cli(["build-index", "-s", str(store), "--kind", "hnsw", "-q"],
                     env={"BIOINDEX_FAULT": "after-index-file"})
    assert result.returncode == -9
    with Store.open(store, read_only=True) as opened:
        assert opened.index_spec.kind == "flat"  # the old generation, whole
        assert opened.snap.index is None or opened.snap.index["structure"]["kind"] == "flat"
    assert _answers(store) == expected
    assert CliRunner().invoke(main, ["check", "-s", str(store), "--full"]).exit_code == 0
    done = CliRunner().invoke(main, ["build-index", "-s", str(store), "--kind", "hnsw", "-q"])
    assert done.exit_code == 0, done.output
    with Store.open(store, read_only=True) as opened:
        assert opened.index_spec.kind == "hnsw" and opened.index().ntotal == 150
    _exactly_once(store, 150)


@pytest.mark.slow
def test_metadata_update_killed_before_it_lands(tmp_path: Path, clean) -> None:
    photos, source, expected = clean
    store = tmp_path / "s"
    shutil.copytree(source, store)
    sidecar = tmp_path / "meta.csv"
    files = sorted(p.relative_to(photos) for p in photos.rglob("*.*"))
    sidecar.write_text("file,scientificName\n" + "".join(f"{f},Felis catus\n" for f in files))
    killed = _index(photos, store, None, "--metadata", str(sidecar),
                    env={"BIOINDEX_FAULT": "metadata-segment"})
    assert killed.returncode == -9
    with Store.open(store, read_only=True) as opened:
        assert opened.catalog.query("SELECT count(scientific_name) FROM images")[1][0][0] == 0
    assert "embedded 0" in _rerun(photos, store, None, "--metadata", str(sidecar))
    with Store.open(store, read_only=True) as opened:
        assert opened.catalog.query("SELECT count(scientific_name) FROM images")[1][0][0] == 150
    _exactly_once(store, 150)
    assert _answers(store) == expected


def _damage(store: Path, what: str) -> str:
    """Damage one file of the current generation; returns its name."""
    with Store.open(store, read_only=True) as opened:
        snap = opened.snap
    if what.startswith("shard"):
        target = snap.shards[1]["file"]
    elif what.startswith("catalog"):
        target = snap.images[0]["file"]
    elif what == "index truncated":
        target = snap.index["file"]["file"]
    else:
        target = "manifest.json"
    path = store / target
    if what.endswith("deleted"):
        path.unlink()
    elif what.endswith("truncated"):
        with open(path, "r+b") as handle:
            handle.truncate(path.stat().st_size // 2)
    elif what == "shard swapped":
        other = store / snap.shards[2]["file"]
        assert other.stat().st_size == path.stat().st_size
        shutil.copyfile(other, path)
    return target


@pytest.mark.slow
@pytest.mark.parametrize("what", ["shard deleted", "shard truncated", "shard swapped",
                                  "catalog deleted", "catalog truncated", "index truncated",
                                  "manifest deleted"])  # fmt: skip
def test_corruption_is_named_never_answered_silently_and_repaired(tmp_path: Path, clean,
                                                                  what: str) -> None:
    photos, source, expected = clean
    store = tmp_path / "s"
    shutil.copytree(source, store)
    with Store.open(store) as opened:  # a saved index, so that one can be damaged too
        opened.index()
    target = _damage(store, what)
    runner = CliRunner()
    checked = runner.invoke(main, ["check", "-s", str(store), "--full"])
    assert checked.exit_code == 1 and target.split("/")[-1] in checked.output, checked.output
    try:
        answers = _answers(store)
    except Exception as exc:  # noqa: BLE001 - an error is fine, a wrong answer is not
        assert "check" in str(exc) or "manifest" in str(exc), exc
    else:
        assert answers == expected
    repaired = runner.invoke(main, ["check", "-s", str(store), "--repair"])
    assert repaired.exit_code == 0, repaired.output
    assert runner.invoke(main, ["check", "-s", str(store), "--full"]).exit_code == 0
    _rerun(photos, store)
    _exactly_once(store, 150)
    assert _answers(store) == expected


@pytest.mark.slow
def test_a_folder_with_data_but_no_manifest_is_never_written_over(tmp_path: Path,
                                                                  tiny_model: str) -> None:
    photos = tmp_path / "photos"
    draw_images(photos, 6, seed=4)
    store = tmp_path / "s"
    _rerun(photos, store, tiny_model)
    shards = sorted((store / "embeddings").iterdir())
    (store / "manifest.json").unlink()
    result = CliRunner().invoke(main, ["index", str(photos), "-s", str(store), "-m", tiny_model,
                                       "-q"])  # fmt: skip
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "no manifest.json" in result.stderr and "--repair" in result.stderr
    assert sorted((store / "embeddings").iterdir()) == shards  # nothing deleted
    (store / "CURRENT").unlink()  # worse: the pointer too
    assert CliRunner().invoke(main, ["check", "-s", str(store), "--repair"]).exit_code == 0
    _rerun(photos, store)
    _exactly_once(store, 6)


def test_a_store_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    from tests.test_store import MODEL

    Store.create(tmp_path / "s", MODEL).close()
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    (tmp_path / "s" / "manifest.json").write_text(json.dumps({**manifest, "format_version": 9}))
    result = CliRunner().invoke(main, ["info", "-s", str(tmp_path / "s")])
    assert result.exit_code == 1 and "newer bioindex" in result.output


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0  # fmt: skip


@pytest.mark.slow
def test_disk_full_is_one_line_and_loses_nothing(tmp_path: Path, tiny_model: str) -> None:
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "6m"):
        pytest.skip("needs root to mount a tmpfs")
    try:
        photos = tmp_path / "photos"
        draw_images(photos, 40, seed=5)
        store = disk / "s"
        _rerun(photos, store, tiny_model)
        before = _answers(store)
        filler = disk / "filler"
        more = tmp_path / "more"
        draw_images(more, 400, seed=6, start=1000)  # more than the 6 MB disk holds
        for file in more.rglob("*.*"):  # same folder tree, more files
            target = photos / file.relative_to(more)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(file, target)
        free = shutil.disk_usage(disk).free
        with open(filler, "wb") as handle:
            handle.write(b"\0" * max(0, free - 200_000))
        args = ["index", str(photos), "-s", str(store), "--batch-size", "8",
                "--commit-every", "8", "--workers", "0", "-q"]  # fmt: skip
        result = CliRunner().invoke(main, args)  # in this process: nothing here needs a kill
        assert result.exit_code == 1, result.stdout
        assert result.stderr.count("\n") == 1 and "disk full" in result.stderr, result.stderr
        # Chunks committed before the disk filled are kept; the last generation is whole.
        assert CliRunner().invoke(main, ["check", "-s", str(store), "--full"]).exit_code == 0
        kept = live_rows(store)
        assert 40 <= kept < 440
        _exactly_once(store, kept)
        assert _answers(store)[0] == before[0] or kept > 40
        filler.unlink()
        _rerun(photos, store)
        _exactly_once(store, 440)
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_format_1_store_is_migrated_on_open(tmp_path: Path, tiny_model: str) -> None:
    """A store made by the release before generations (tests/data, made with its code)."""
    import tarfile

    with tarfile.open(Path(__file__).parent / "data" / "store-format1.tar.gz") as archive:
        archive.extractall(tmp_path, filter="data")
    store = tmp_path / "store"
    with Store.open(store, read_only=True) as opened:
        assert opened.live_count() == 29 and opened.catalog.status_counts()["deleted"] == 1
        assert opened.index().ntotal == 29 and opened.snap.index is not None
        ids = opened.catalog.live_ids()
        scores, found = opened.search(opened.vectors(ids[:1]), 1)
        assert found[0][0] == ids[0] and scores[0][0] > 0.999
        runs = opened.runs()
    assert [r["run_id"] for r in runs] == [1, 2] and isinstance(runs[0]["sources"], list)
    assert (store / "catalog.v1.duckdb").is_file() and not (store / "catalog.duckdb").exists()
    assert CliRunner().invoke(main, ["check", "-s", str(store), "--full"]).exit_code == 0
    with Store.open(store) as opened:  # and it takes new work
        new = opened.commit([], np.zeros((0, opened.dim)))
        assert new == []
    assert_index_matches_catalog(store)
