"""The stages of an indexing run: decode shortcuts, the writer thread, stopping early."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bioindex.collection import Collection
from bioindex.indexer import pipeline
from bioindex.indexer.embed import decode, decode_batch, split_transform
from bioindex.indexer.pipeline import Writer
from bioindex.indexer.sources import Item
from bioindex.models import load_model
from tests.conftest import draw_images, live_rows


def test_writer_hands_a_failed_write_to_the_caller_and_stops_writing() -> None:
    written: list[int] = []
    threads: set[str] = set()

    def write(chunk: int) -> None:
        threads.add(threading.current_thread().name)
        if chunk == 2:
            raise OSError("disk full")
        written.append(chunk)

    writer = Writer(write)
    with pytest.raises(OSError, match="disk full"):
        for chunk in range(1, 50):
            writer.put(chunk)
    writer.close(99)  # the error was reported once already; nothing after it lands
    assert written == [1]
    assert threads == {"bioindex-writer"}


def test_writer_writes_everything_in_order_on_close() -> None:
    written: list[int] = []
    writer = Writer(written.append)
    for chunk in range(1, 20):
        writer.put(chunk)
    writer.close(20)
    assert written == list(range(1, 21))


def test_interrupted_run_keeps_what_was_embedded(
    tmp_path: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = tmp_path / "images"
    draw_images(images, 40)
    real = pipeline.embed_items

    def interrupted(*args, **kwargs):
        for number, batch in enumerate(real(*args, **kwargs)):
            if number == 3:
                raise KeyboardInterrupt  # what Ctrl-C raises between batches
            yield batch

    monkeypatch.setattr(pipeline, "embed_items", interrupted)
    store = tmp_path / "store"
    c = Collection.open(store, model=tiny_model, create=True, device="cpu")
    with pytest.raises(KeyboardInterrupt):
        # commit_every is larger than the run: before, nothing was committed at all.
        c.index([images], batch_size=8, workers=0, commit_every=1000, progress=False)
    c.close()
    assert live_rows(store) == 24

    monkeypatch.setattr(pipeline, "embed_items", real)
    c = Collection.open(store, model=tiny_model, device="cpu")
    summary = c.index([images], batch_size=8, workers=0, progress=False)
    assert (summary.embedded, summary.unchanged) == (16, 24)
    ntotal = c.store.index().ntotal
    c.close()
    assert ntotal == live_rows(store) == 40


def test_images_already_at_the_model_size_skip_resizing_with_identical_pixels(
    tmp_path: Path, tiny_model: str
) -> None:
    model = load_model(tiny_model, device="cpu")
    size = model.identity.image_size
    pil_part, _, _ = split_transform(model.transform)
    rng = np.random.default_rng(3)
    shapes = [
        (size, size, "RGB"),
        (size, size, "L"),
        (size, size + 40, "RGB"),
        (size + 9,) * 2 + ("RGB",),
    ]
    items = []
    for number, (height, width, mode) in enumerate(shapes):
        array = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        path = tmp_path / f"{number}.jpg"
        Image.fromarray(array).convert(mode).save(path, quality=92)
        items.append(Item(str(path), str(path), path.stat().st_size, path.stat().st_mtime))

    batch = decode_batch(items, range(len(items)), pil_part, model.transform, size, False)
    assert batch["pixels"].shape == (len(items), 3, size, size)
    assert batch["decode_seconds"] > 0  # the worker's CPU time, for CpuThreads
    for item, pixels in zip(items, batch["pixels"]):
        expected = np.asarray(pil_part(decode(Path(item.path).read_bytes(), size, False)))
        assert np.array_equal(pixels.permute(1, 2, 0).numpy(), expected)
    assert [(w, h) for w, h in zip(batch["width"], batch["height"])] == [
        (w, h) for h, w, _ in shapes
    ]


@pytest.mark.parametrize(("decoding", "modelling", "model_gets_all"), [
    (0.05, 0.08, True),  # small images: the model is the slower stage
    (0.12, 0.06, False),  # large JPEGs: decoding is
])  # fmt: skip
def test_cpu_model_threads_follow_the_slower_stage(decoding, modelling, model_gets_all) -> None:
    import os

    import torch

    from bioindex.indexer.embed import CpuThreads

    before = torch.get_num_threads()
    try:
        threads = CpuThreads(torch, workers=os.cpu_count() or 2)
        assert torch.get_num_threads() == 1
        threads.update(5.0, 0.01)  # the first batch waits for the workers to start
        for _ in range(CpuThreads.SAMPLE):
            threads.update(decoding, modelling)
        expected = (os.cpu_count() or 2) if model_gets_all else 1
        assert torch.get_num_threads() == expected
        for _ in range(20):  # decided once: later batches do not flip it
            threads.update(modelling * 3, decoding)
        assert torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_ctrl_c_commits_what_was_embedded_then_the_rerun_finishes(
    tmp_path: Path, tiny_model: str
) -> None:
    import fcntl
    import os
    import pty
    import re
    import select
    import signal
    import struct
    import termios

    from tests.cli_process import CliProcess
    from tests.conftest import assert_index_matches_catalog

    photos = tmp_path / "photos"
    draw_images(photos, 240, seed=21)
    store = tmp_path / "s"
    # Nothing is committed during the run (commit-every > 240) but what Ctrl-C leaves.
    args = ["index", str(photos), "-s", str(store), "-m", tiny_model, "--batch-size", "8",
            "--commit-every", "100000", "--workers", "1"]  # fmt: skip
    # A terminal for stderr, so the progress bar shows (it is off when stderr is a pipe).
    master, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    process = CliProcess(args, stderr=terminal)
    os.close(terminal)
    shown, done, interrupted = "", 0, False
    progress = re.compile(r"embedding:.*?\| *(\d+)/240")
    while process.poll() is None:
        if select.select([master], [], [], 0.2)[0]:
            try:
                shown += os.read(master, 65536).decode(errors="replace")
            except OSError:
                break
        counts = progress.findall(shown)
        if not interrupted and counts and 40 <= int(counts[-1]) < 200:
            done, interrupted = int(counts[-1]), True
            process.send_signal(signal.SIGINT)
    os.close(master)
    process.wait(timeout=120)
    assert interrupted, f"the run ended before it could be interrupted: {shown[-500:]}"
    assert process.returncode != 0
    kept = live_rows(store)
    assert kept >= done  # at least what the progress bar had shown as embedded
    # The rerun runs in this process: the interrupted run is the one that had to be its own.
    from click.testing import CliRunner

    from bioindex.cli import main

    rerun = CliRunner().invoke(main, [*args, "-q"])
    assert rerun.exit_code == 0, rerun.output
    assert f"unchanged {kept}" in rerun.stdout
    assert live_rows(store) == 240
    assert_index_matches_catalog(store)


def test_a_second_ctrl_c_waits_for_the_commit_in_progress() -> None:
    import os
    import signal
    import time

    written: list[int] = []
    started = threading.Event()

    def slow_write(chunk: int) -> None:
        started.set()
        time.sleep(1.0)
        written.append(chunk)

    writer = Writer(slow_write)
    writer.put(1)
    started.wait(5)
    # The main thread is in close() when the signal comes, as on a Ctrl-C at 100%. (Python's
    # own handler, also where the suite was started with SIGINT ignored.)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            writer.close(2)
    finally:
        signal.signal(signal.SIGINT, before)
    assert written == [1, 2]  # nothing was cut off, and the interrupt still reaches the caller
