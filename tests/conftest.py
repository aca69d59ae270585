from __future__ import annotations

import os
from pathlib import Path

# Up to four test workers share two cores: each library's own pool of a thread per core
# (OpenMP in faiss and torch, OpenBLAS) oversubscribes them, and OpenMP's waiting threads
# spin. One thread each, set before numpy, faiss and torch load (subprocesses inherit it);
# tests that need threads set them. Measured: docs/benchmarks.md, "The test suite's threads".
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_variable, "1")

import numpy as np  # noqa: E402 — after the thread settings above
import pytest  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures"


def shared(*parts: str) -> Path:
    path = SHARED_FIXTURES.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared fixture {path} is absent")
    return path


# Four of the shared camera-trap photos named to species, as Darwin Core columns.
CAMERA_TRAP_SPECIES = (
    "file,scientificName,kingdom,family,genus,specificEpithet\n"
    "ocelot.jpg,Leopardus pardalis,Animalia,Felidae,Leopardus,pardalis\n"
    "american_black_bear.jpg,Ursus americanus,Animalia,Ursidae,Ursus,americanus\n"
    "african_elephants.jpg,Loxodonta africana,Animalia,Elephantidae,Loxodonta,africana\n"
    "african_elephants_bw.jpg,Loxodonta africana,Animalia,Elephantidae,Loxodonta,africana\n"
)
CAMERA_TRAP_NAMED = ("ocelot.jpg", "american_black_bear.jpg", "african_elephants.jpg",
                     "african_elephants_bw.jpg")  # fmt: skip


def draw_images(folder: Path, count: int, seed: int = 0, start: int = 0,
                sides: tuple[int, int] = (96, 320)) -> list[Path]:  # fmt: skip
    """Distinct pictures (random shapes on random backgrounds), as JPEG and PNG, with
    sides drawn from `sides`."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + count):
        w, h = int(rng.integers(*sides)), int(rng.integers(*sides))
        image = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(2, 6))):
            x0, y0 = int(rng.integers(0, w - 10)), int(rng.integers(0, h - 10))
            x1, y1 = x0 + int(rng.integers(8, w)), y0 + int(rng.integers(8, h))
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), colour)
        noise = rng.integers(-20, 20, (h, w, 3))
        image = Image.fromarray(np.clip(np.asarray(image) + noise, 0, 255).astype(np.uint8))
        sub = folder / f"group{i % 4}"
        sub.mkdir(exist_ok=True)
        path = sub / (f"img{i:04d}.jpg" if i % 3 else f"img{i:04d}.png")
        image.save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    from bioindex.tiny import make_tiny_model

    # 64 px input: the tests are about the pipeline, not the pixels, and decode, resize
    # and normalise at 224 px were most of the suite's embedding time.
    folder = make_tiny_model(tmp_path_factory.mktemp("models") / "tiny", seed=0,
                             image_size=64, patch_size=16)
    return f"local-dir:{folder}"


@pytest.fixture(scope="session")
def tiny_model_224(tmp_path_factory: pytest.TempPathFactory) -> str:
    """BioCLIP's input size, for parity with pybioclip (which squashes to 224 px)."""
    from bioindex.tiny import make_tiny_model

    folder = make_tiny_model(tmp_path_factory.mktemp("models") / "tiny224", seed=0)
    return f"local-dir:{folder}"


@pytest.fixture(scope="session")
def other_tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    from bioindex.tiny import make_tiny_model

    folder = make_tiny_model(tmp_path_factory.mktemp("models") / "other", seed=1, embed_dim=48)
    return f"local-dir:{folder}"


def live_rows(store_path: Path) -> int:
    from bioindex.store import Store

    with Store.open(store_path, read_only=True) as store:
        return store.live_count()


def assert_index_matches_catalog(store_path: Path) -> None:
    """The contract: FAISS ntotal == live rows, and the ids are the same set."""
    import faiss

    from bioindex.store import Store

    with Store.open(store_path, read_only=True) as store:
        index = store.index()
        ids = set(store.catalog.live_ids().tolist())
        assert index.ntotal == len(ids) == live_rows(store_path)
        stored = set(faiss.vector_to_array(index.id_map).tolist())
        assert stored == ids


class LiveServer:
    """A real uvicorn server for an app, on a free 127.0.0.1 port, in a thread. The kernel
    picks the port as the server binds (port 0): a port chosen first and bound later can be
    taken in between by a test on another worker."""

    def __init__(self, app) -> None:
        import threading

        import uvicorn

        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        import time

        from bioindex.serve.run import bound_port

        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.server.started, "uvicorn did not start"
        self.port = bound_port(self.server)
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def send_response(handler, code: int, headers: dict[str, str], body: bytes) -> None:
    """An http.server handler's whole answer; a client that went away is no error."""
    try:
        handler.send_response(code)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
    except (BrokenPipeError, ConnectionResetError):
        pass


# The longest files, longest first (`pytest --durations=0`, summed per file: 105 s down to
# 24 s on this machine). Only an order for the workers to take them in; a stale entry costs
# nothing but balance.
LONGEST_FILES = ("test_distributed.py", "test_identify.py", "test_server_hardening.py",
                 "test_index_kinds.py", "test_store_faults.py", "test_store_concurrency.py",
                 "test_first_hour_fixes.py", "test_demo.py", "test_text_queries.py",
                 "test_store.py", "test_bursts.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest files first, then the others with slow tests: workers take whole files
    in this order (--dist=loadfile with --no-loadscope-reorder; xdist's own order, by
    number of tests, handed the longest file out last and left one worker running alone
    for 80 s), and the longest jobs started first finish together."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}

    def order(item: pytest.Item) -> tuple[int, bool]:
        name = item.path.name
        longest = LONGEST_FILES.index(name) if name in LONGEST_FILES else len(LONGEST_FILES)
        return longest, item.path not in slow_files

    items.sort(key=order)  # stable: the order within a file is kept
