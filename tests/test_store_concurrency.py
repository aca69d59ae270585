"""Readers never wait for the writer; one writer at a time; creating a store is exclusive."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bioindex.cli import main
from bioindex.errors import BioindexError
from bioindex.store import ImageRecord, Store
from bioindex.store.snapshot import read_current
from tests.cli_process import CliProcess, run_cli
from tests.conftest import assert_index_matches_catalog, draw_images, live_rows
from tests.test_store import MODEL, _records, _unit


def test_a_second_writer_is_refused_with_one_line_or_waits(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "s", MODEL)
    store.commit(_records(["a"]), _unit(1))
    with pytest.raises(BioindexError, match=r"being written by process \d+.*pass --wait"):
        Store.open(tmp_path / "s")
    with Store.open(tmp_path / "s", read_only=True) as reader:  # readers never wait
        assert reader.live_count() == 1
    opened: list[Store] = []
    waiter = threading.Thread(target=lambda: opened.append(Store.open(tmp_path / "s", wait=True)))
    waiter.start()
    time.sleep(0.5)
    assert not opened  # still waiting for the first writer
    store.close()
    waiter.join(timeout=10)
    assert opened and opened[0].live_count() == 1
    opened[0].commit(_records(["b"]), _unit(1, seed=1))
    opened[0].close()
    assert live_rows(tmp_path / "s") == 2


@pytest.mark.slow
def test_second_cli_writer_gets_one_line(tmp_path: Path, tiny_model: str) -> None:
    photos = tmp_path / "photos"
    draw_images(photos, 4, seed=1)
    made = CliRunner().invoke(main, ["index", str(photos), "-s", str(tmp_path / "s"), "-m",
                                     tiny_model, "-q"])  # fmt: skip
    assert made.exit_code == 0, made.output
    holder = Store.open(tmp_path / "s")
    try:
        for command in (["index", str(photos)], ["build-index"]):
            result = run_cli([*command, "-s", str(tmp_path / "s"), "-q"])
            assert result.returncode == 1
            assert result.stderr.count("\n") == 1 and "being written by process" in result.stderr
    finally:
        holder.close()


def test_a_manifest_written_while_a_new_store_is_checked_is_no_stranger(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The race test_two_runs_creating_one_store lost once in CI: the other run's manifest
    appeared between "is there a manifest?" and the look at what the folder holds, and the
    folder was called "a non-empty folder that is not a bioindex store"."""
    made = Store.create(tmp_path / "s", MODEL)
    made.close()
    manifest = tmp_path / "s" / "manifest.json"
    real, asked = Path.is_file, []

    def not_yet(path: Path) -> bool:  # the manifest is not there when first asked
        if path == manifest and not asked:
            asked.append(path)
            return False
        return real(path)

    monkeypatch.setattr(Path, "is_file", not_yet)
    with Store.create(tmp_path / "s", MODEL) as store:  # the same model: it opens
        assert store.model["dim"] == MODEL["dim"]
    assert asked


@pytest.mark.slow
@pytest.mark.parametrize("same_model", [True, False])
def test_two_runs_creating_one_store(tmp_path: Path, tiny_model: str, other_tiny_model: str,
                                     same_model: bool) -> None:  # fmt: skip
    photos = tmp_path / "photos"
    draw_images(photos, 24, seed=2)
    store = tmp_path / "s"
    second_model = tiny_model if same_model else other_tiny_model
    runs = [CliProcess(["index", str(photos), "-s", str(store), "-m", model, "--batch-size",
                        "4", "--workers", "0", "-q", "--wait"])
            for model in (tiny_model, second_model)]  # fmt: skip
    results = [(done.returncode, done.stdout, done.stderr) for done in (p.result() for p in runs)]
    codes = sorted(code for code, _, _ in results)
    if same_model:
        assert codes == [0, 0]
    else:
        assert codes == [0, 1]
        refused = next(err for code, _, err in results if code == 1)
        last = refused.strip().splitlines()[-1]  # after a line saying it waited
        assert last.startswith("error: ") and "was made with model" in last
        assert "Traceback" not in refused
    # The readers run in-process: the racing writers above are the separate processes.
    info = CliRunner().invoke(main, ["info", "-s", str(store), "--format", "json"])
    assert info.exit_code == 0, info.output
    assert json.loads(info.stdout)["images_live"] == 24
    search = CliRunner().invoke(main, ["search", "text", "a photo", "-s", str(store), "-k", "3"])
    assert search.exit_code == 0, search.output
    assert_index_matches_catalog(store)


def test_a_reader_follows_the_writer_without_reopening(tmp_path: Path) -> None:
    writer = Store.create(tmp_path / "s", MODEL)
    writer.commit(_records(["a", "b"]), _unit(2))
    writer.save_index()
    reader = Store.open(tmp_path / "s", read_only=True)
    assert reader.index().ntotal == 2
    new = _unit(1, seed=9)
    writer.commit([ImageRecord("/x/new", 1, 1.0, None, 1, 1, {})], new)
    writer.mark_deleted([1])
    assert reader.refresh()
    scores, ids = reader.search(new, 1)
    assert ids[0][0] == 3 and scores[0][0] > 0.999  # caught up without a rebuild
    assert reader.index().ntotal == reader.live_count() == 2
    assert not reader.refresh()  # nothing new: one stat call
    writer.close()
    reader.close()


def test_an_old_generation_stays_readable_while_pinned(tmp_path: Path) -> None:
    writer = Store.create(tmp_path / "s", MODEL)
    writer.commit(_records(["a"]), _unit(1))
    reader = Store.open(tmp_path / "s", read_only=True)
    for i in range(20):  # enough small segments to be compacted away
        writer.commit(_records([f"n{i}"]), _unit(1, seed=i + 10))
    writer.compact()
    writer.close()  # collects every generation no reader holds
    assert reader.live_count() == 1 and reader.rows([1])[1]["uri"] == "/x/a"
    np.testing.assert_allclose(reader.vectors([1]), _unit(1), atol=1e-3)
    assert reader.refresh() and reader.live_count() == 21
    reader.close()


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_serve_and_cli_read_while_5000_images_are_appended(tmp_path: Path, tiny_model: str
                                                           ) -> None:  # fmt: skip
    first, more = tmp_path / "first", tmp_path / "more"
    draw_images(first, 40, seed=1)
    # 500 drawn pictures under ten names each: 5,000 files, without drawing 5,000.
    # Small pictures: the test is about readers during 5,000 commits, not decoding.
    for picture in draw_images(tmp_path / "drawn", 500, seed=2, start=100, sides=(40, 72)):
        for copy in range(10):
            (more / f"copy{copy}").mkdir(parents=True, exist_ok=True)
            os.link(picture, more / f"copy{copy}" / picture.name)
    store = tmp_path / "s"
    made = CliRunner().invoke(main, ["index", str(first), "-s", str(store), "-m", tiny_model,
                                     "-q"])  # fmt: skip
    assert made.exit_code == 0, made.output
    # Port 0: the server binds whatever is free and says which; a port picked here first
    # could be taken by a test on another worker before the server binds it.
    # Its request log goes to a file: an unread pipe fills up and stalls the server.
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed with the server
    server = CliProcess(["serve", "-s", store, "--port", "0"], stderr=log.fileno())
    try:
        deadline = time.monotonic() + 60
        while "ready: open " not in (tmp_path / "serve.log").read_text():
            assert time.monotonic() < deadline and server.poll() is None, "no server"
            time.sleep(0.2)
        ready = (tmp_path / "serve.log").read_text().split("ready: open ")[1].split()[0]
        base = ready.rstrip("/")
        assert _get(f"{base}/api/info")["images_live"] == 40  # this test's server
        writer = CliProcess(["index", str(more), "-s", str(store), "--commit-every", "256",
                             "-q"])  # fmt: skip
        committed: dict[int, float] = {}  # generation → when it became current
        seen: list[tuple[float, int]] = []  # (time, generation) answered by the server
        failures: list[str] = []
        cli_runs: list[int] = []
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                try:
                    committed.setdefault(read_current(store), time.monotonic())
                except BioindexError:
                    pass
                time.sleep(0.01)

        def serve_reads() -> None:
            for _ in range(3000):  # bounded
                if done.is_set():
                    return
                try:
                    info = _get(f"{base}/api/info")
                    hits = _get(f"{base}/api/search/text?q=a%20photo&k=5")["results"]
                except urllib.error.HTTPError as exc:  # the body says what went wrong
                    failures.append(f"http {exc.code}: {exc.read()[:300]!r}")
                    continue
                except Exception as exc:  # noqa: BLE001 - every failure is counted
                    failures.append(f"http: {exc}")
                    continue
                seen.append((time.monotonic(), info["generation"]))
                if info["index_ntotal"] != info["images_live"] or len(hits) != 5:
                    failures.append(f"inconsistent: {info['index_ntotal']} vectors for "
                                    f"{info['images_live']} rows, {len(hits)} hits")
                time.sleep(0.05)

        def cli_reads() -> None:
            # A few CLI searches over the run, not back to back: the indexer runs on the same
            # two cores.
            for _ in range(4):
                if done.wait(timeout=4.0):
                    return
                result = run_cli(["search", "text", "a photo", "-s", str(store), "-k", "3",
                                  "--format", "json"])  # fmt: skip
                cli_runs.append(result.returncode)
                if result.returncode != 0 or len(json.loads(result.stdout or "[]")) != 3:
                    failures.append(f"cli: {result.stderr.strip()[-300:]}")

        threads = [threading.Thread(target=f) for f in (watch, serve_reads, cli_reads)]
        for thread in threads:
            thread.start()
        written = writer.result(timeout=600)
        time.sleep(2.5)
        done.set()
        for thread in threads:
            thread.join(timeout=60)
        assert written.returncode == 0, written.stderr
        assert "embedded 5000" in written.stdout
        logged = (tmp_path / "serve.log").read_text()
        where = logged.find("Traceback")  # a 500's own traceback, else the log's end
        assert not failures, (failures[:5], server.poll(),
                              logged[where : where + 3000] if where >= 0 else logged[-2000:])
        assert cli_runs  # the CLI read during the run
        assert _get(f"{base}/api/info")["images_live"] == 5040
        last = max(committed)
        for generation, at in committed.items():
            later = [t for t, g in seen if g >= generation]
            assert later and min(later) <= at + 2.0, (generation, last)
        assert len(committed) > 5  # the run was really seen committing in steps
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    assert live_rows(store) == 5040


def test_a_mapped_index_is_never_changed_in_place(tmp_path: Path) -> None:
    """FAISS aborts the process when a mapped index is added to (seen: `bioindex search`
    during an index run). A reader behind the writer reads the file into memory instead,
    and a mapped one copies it before catching up."""
    writer = Store.create(tmp_path / "s", MODEL)
    writer.commit(_records(["a", "b"]), _unit(2))
    writer.index()
    writer.save_index()
    current = Store.open(tmp_path / "s", read_only=True, map_index=True)
    assert current.index().ntotal == 2
    writer.commit(_records(["c"]), _unit(1, seed=4))  # now the saved file is behind
    behind = Store.open(tmp_path / "s", read_only=True, map_index=True)
    assert behind.index().ntotal == 3
    assert current.refresh() and current.index().ntotal == 3
    scores, ids = current.search(_unit(1, seed=4), 1)
    assert ids[0][0] == 3 and scores[0][0] > 0.999
    for store in (current, behind, writer):
        store.close()


def test_a_killed_writers_lock_dies_with_it_though_its_workers_linger(tmp_path: Path) -> None:
    """Decode workers are forked: the lock must not live on in them after a kill -9."""
    import signal
    import subprocess as sp

    Store.create(tmp_path / "s", MODEL).close()
    script = f"""
import os, time
from bioindex.store import Store
store = Store.open({str(tmp_path / "s")!r})
started, told = os.pipe()
if os.fork() == 0:
    os.write(told, b"x")  # running (fork handlers done): a worker that has not noticed yet
    time.sleep(20)
    os._exit(0)
os.read(started, 1)
print("ready", flush=True)
time.sleep(60)
"""
    writer = sp.Popen([sys.executable, "-c", script], stdout=sp.PIPE, text=True)
    assert writer.stdout.readline().strip() == "ready"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    with Store.open(tmp_path / "s") as store:  # not "being written by process …"
        assert store.live_count() == 0


CHURN = """
import os, sys, time
end = time.monotonic() + float(sys.argv[2])
i = 0
while time.monotonic() < end:  # what a writer does: a file written, renamed or deleted
    path = os.path.join(sys.argv[1], f"churn{i % 50}.tmp")
    with open(path, "w") as handle:
        handle.write("x")
    os.unlink(path)
    i += 1
"""


def test_info_counts_the_store_s_bytes_while_a_writer_adds_and_deletes_files(tmp_path: Path
                                                                             ) -> None:  # fmt: skip
    # A server's /api/info was a 500 (FileNotFoundError) when a file it had listed to size
    # the store was renamed or collected before its stat.
    store = Store.create(tmp_path / "s", MODEL)
    store.commit(_records(["a"]), _unit(1))
    store.close()
    churn = subprocess.Popen([sys.executable, "-c", CHURN, str(tmp_path / "s" / "catalog"), "4"])
    try:
        with Store.open(tmp_path / "s", read_only=True) as reader:
            time.sleep(0.3)  # the churn under way
            end = time.monotonic() + 2.0  # bounded: before the fix it failed within ~10 calls
            while time.monotonic() < end:
                assert reader.info()["store_bytes"] > 0
    finally:
        churn.kill()
        churn.wait()


def test_check_reads_one_generation_while_a_writer_moves_on(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:  # fmt: skip
    # `bioindex check --full` reads every file of the current generation (minutes on a large
    # store); a writer that committed and compacted meanwhile deleted that generation's
    # files under it, and check called a sound store damaged ("missing").
    from bioindex.store import check as store_check
    from bioindex.store import files

    writer = Store.create(tmp_path / "s", MODEL)
    for i in range(20):  # small segments, compacted away below
        writer.commit(_records([f"n{i}"]), _unit(1, seed=i))
    writer.close()
    checked = files.problem
    moved_on: list[bool] = []

    def writer_meanwhile(path: Path, record: dict, full: bool = False) -> str | None:
        if not moved_on:  # the writer runs between check's first and second file
            moved_on.append(True)
            with Store.open(tmp_path / "s") as again:
                again.commit(_records(["late"]), _unit(1, seed=99))
                again.compact()
        return checked(path, record, full)

    monkeypatch.setattr(files, "problem", writer_meanwhile)
    report = store_check.check(tmp_path / "s", full=True)
    assert moved_on and report.ok, report.problems
    monkeypatch.undo()
    assert store_check.check(tmp_path / "s").ok  # and the newer generation checks out too


def test_a_damaged_snapshot_leaves_no_file_open_behind(tmp_path: Path) -> None:
    # A server retrying a damaged store kept one more descriptor (and shared lock) each time.
    from bioindex.store import snapshot

    with Store.create(tmp_path / "s", MODEL) as store:
        store.commit(_records(["a"]), _unit(1))
        current = snapshot.snapshot_path(tmp_path / "s", store.generation())
    current.write_text("{not json")

    def open_on_it() -> int:  # this process's descriptors open on the snapshot file
        found = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                found += os.readlink(f"/proc/self/fd/{fd}") == str(current)
            except OSError:  # closed meanwhile (another thread's)
                pass
        return found

    for _ in range(5):
        with pytest.raises(BioindexError, match="damaged"):
            snapshot.Pin(tmp_path / "s").latest()
    assert open_on_it() == 0


def test_a_reader_stays_on_its_generation_when_the_next_one_is_damaged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    # A server moving to a generation whose new shard was cut got an error on every
    # request, and had let go of the generation it was still answering from: a writer's
    # compaction then deleted that generation's files under it.
    writer = Store.create(tmp_path / "s", MODEL)
    for i in range(20):  # small segments, compacted away below
        writer.commit(_records([f"n{i}"]), _unit(1, seed=i))
    reader = Store.open(tmp_path / "s", read_only=True)
    writer.commit(_records(["late"]), _unit(1, seed=99))
    shard = max((tmp_path / "s" / "embeddings").glob("*.npy"))
    with open(shard, "r+b") as cut:
        cut.truncate(shard.stat().st_size - 8)
    logger = logging.getLogger("bioindex.store.front")
    logger.addHandler(caplog.handler)  # the CLI's tests leave "bioindex" not propagating
    try:
        assert not reader.refresh()  # stays where it was, and says why
    finally:
        logger.removeHandler(caplog.handler)
    assert "staying at generation 20" in caplog.text and "run bioindex check" in caplog.text
    assert not reader.refresh()  # the same damaged generation is not tried on every ask
    writer.compact()
    writer.close()  # collects every generation no reader holds
    assert reader.generation() == 20 and reader.live_count() == 20
    assert reader.rows([1])[1]["uri"] == "/x/n0"
    reader.close()
