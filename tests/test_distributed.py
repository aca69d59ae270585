"""`--engine ray` on a local Ray runtime (2 CPUs): same store as the local engine, and a
killed job resumes with every image exactly once."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from bioindex import Collection, faiss_index
from bioindex.store import Store
from tests.cli_process import CliProcess, run_cli
from tests.conftest import assert_index_matches_catalog, draw_images

ray = pytest.importorskip("ray")
IMAGES = 200  # enough for a job to be killed mid-way after two of its 16-image commits


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ray-images")
    draw_images(folder, IMAGES, seed=21)
    (folder / "group0" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


@pytest.fixture(scope="module")
def local_ray():
    from bioindex.indexer.ray_engine import connect

    connect(num_cpus=2)
    yield
    ray.shutdown()


def _vectors_by_uri(path: Path) -> dict[str, np.ndarray]:
    with Store.open(path, read_only=True) as store:
        rows = store.catalog.query(
            "SELECT uri, image_id FROM images WHERE status='live' ORDER BY image_id"
        )[1]
        vectors = store.vectors([i for _, i in rows])
    return {uri: vector for (uri, _), vector in zip(rows, vectors)}


@pytest.mark.slow
def test_ray_engine_store_equals_the_local_engine(images, tiny_model, local_ray, tmp_path,
                                                  monkeypatch) -> None:  # fmt: skip
    """Also a zip of photos: the Ray engine's work rows carried no deflated length, so it
    read every deflated member as is — all failed "cannot identify image file". A photo's
    EXIF date reaches the catalog from either engine. (One index run per engine: each Ray
    run costs seconds of start-up.) A run of one work block starts one model actor, not
    one per core: the others only loaded the model."""
    import zipfile

    pools = []
    strategy = ray.data.ActorPoolStrategy

    def counted(*args, **kwargs):
        pools.append(kwargs.get("size"))
        return strategy(*args, **kwargs)

    monkeypatch.setattr(ray.data, "ActorPoolStrategy", counted)

    from tests.conftest import shared

    trip = tmp_path / "trip.zip"
    photos = [*sorted(images.rglob("*.png"))[:5], shared("camera-trap", "blank.jpg")]
    with zipfile.ZipFile(trip, "w") as zipped:
        methods = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
        for i, photo in enumerate(photos):  # the work rows carry how each is compressed
            zipped.write(photo, photo.name, compress_type=methods[i % 4])
    with Collection.open(tmp_path / "local", model=tiny_model, device="cpu", create=True) as c:
        local = c.index([images, trip], progress=False, workers=0)
    with Collection.open(tmp_path / "ray", model=tiny_model, device="cpu", create=True) as c:
        distributed = c.index([images, trip], progress=False, engine="ray", commit_every=64)
    found = (distributed.embedded, distributed.failed)
    assert (local.embedded, local.failed) == found == (IMAGES + 6, 1)
    assert pools == [1]  # 207 files are one block of work
    a, b = _vectors_by_uri(tmp_path / "local"), _vectors_by_uri(tmp_path / "ray")
    assert a.keys() == b.keys() and len(a) == IMAGES + 6
    # Stored float16 vectors are a hair off unit length; a cosine divides that out.
    cosines = np.array([float(a[u] @ b[u] / np.linalg.norm(a[u]) / np.linalg.norm(b[u]))
                        for u in a])  # fmt: skip
    assert cosines.min() >= 0.9999
    dates = {}
    for name in ("local", "ray"):
        with Store.open(tmp_path / name, read_only=True) as store:
            dates[name] = store.catalog.query("SELECT uri, event_date FROM images "
                                              "WHERE event_date IS NOT NULL")[1]  # fmt: skip
    assert dates["local"] == dates["ray"] == [(f"{trip}#blank.jpg", "2016-09-25T18:35:10")]
    with Store.open(tmp_path / "ray", read_only=True) as store:
        assert [f["uri"] for f in store.failures()] == [str(images / "group0" / "broken.jpg")]
        assert store.failures()[0]["stage"] == "decode"
        counted = store.catalog.query("SELECT count(DISTINCT image_id) FROM images")[1][0][0]
        assert counted == IMAGES + 6
    assert_index_matches_catalog(tmp_path / "ray")
    # Unchanged input: nothing is sent to the cluster again.
    with Collection.open(tmp_path / "ray", device="cpu") as c:
        again = c.index([images, trip], progress=False, engine="ray")
    assert (again.embedded, again.unchanged) == (0, IMAGES + 6)


@pytest.mark.slow
def test_killed_ray_job_resumes_with_each_image_once(images, tiny_model, local_ray,
                                                     tmp_path) -> None:  # fmt: skip
    """The jobs join this module's Ray runtime, as drivers join a cluster that outlives
    them: two Ray start-ups fewer (31 → 23 s alone); the rerun gets the CPUs the killed
    driver's actors held."""
    store = tmp_path / "s"
    args = ["index", images, "--store", store, "--model", tiny_model, "--device", "cpu",
            "--engine", "ray", "--address", ray.get_runtime_context().gcs_address,
            "--commit-every", "16", "--batch-size", "8", "-q"]  # fmt: skip
    env = {"RAY_ADDRESS": ""}  # never someone's cluster
    # Its own session: the kill takes the driver and anything it started.
    job = CliProcess(args, env, new_session=True)
    shards = store / "embeddings"
    deadline = time.time() + 180
    while time.time() < deadline and job.poll() is None:
        if shards.is_dir() and len(list(shards.glob("shard-*.npy"))) >= 2:
            break
        time.sleep(0.2)
    assert job.poll() is None, "the job finished before it could be killed"
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    with Store.open(store, read_only=True) as opened:
        partial = opened.live_count()
    assert 0 < partial < IMAGES

    done = run_cli(args, env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "embedded" in done.stdout
    # Ray's start-up notes (an "E … core_worker.cc" line, warnings) only with --verbose.
    assert "core_worker" not in done.stderr and "WARNING" not in done.stderr, done.stderr
    with Store.open(store) as opened:
        uris = [r[0] for r in opened.catalog.query("SELECT uri FROM images")[1]]
        assert len(uris) == len(set(uris)) == opened.live_count() == IMAGES
        referenced = {r[0] for r in opened.catalog.query(
            "SELECT DISTINCT shard FROM images")[1]}  # fmt: skip
    assert {p.name for p in shards.iterdir()} == referenced  # no orphan shard files
    assert_index_matches_catalog(store)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_build_index_on_ray_merges_to_the_local_result(local_ray, tmp_path, kind) -> None:
    from bioindex.indexer.ray_engine import RayBuilder
    from bioindex.synthetic import ClusteredVectors
    from tests.test_index_kinds import MODEL, _records

    generator = ClusteredVectors(64, centres=200, seed=9)
    vectors = generator.sample(12_000)
    queries = generator.sample(100, part=1)
    results = {}
    for engine in ("local", "ray"):
        with Store.create(tmp_path / engine, MODEL) as store:
            for start in range(0, len(vectors), 3_000):  # four shards
                store.commit(_records(start, 3_000), vectors[start : start + 3_000])
            builder = RayBuilder() if engine == "ray" else None
            spec = store.build_index(kind=kind, builder=builder)
            assert store.index().ntotal == store.live_count() == len(vectors)
            # The search width is tuned by timing, which differs from run to run; the lists
            # are compared at one fixed width, without re-ranking.
            fixed = faiss_index.IndexSpec(kind=spec.kind, dim=spec.dim, nlist=spec.nlist,
                                          search={"nprobe": 8} if spec.nlist else {})
            results[engine] = (spec, faiss_index.search(store.index(), fixed, queries, 10))
    (local_spec, (local_scores, local_ids)), (ray_spec, (ray_scores, ray_ids)) = (
        results["local"], results["ray"])  # fmt: skip
    # Training is seeded and the parts hold the same vectors, so the merged lists answer
    # exactly as the single-process build does.
    assert (ray_spec.kind, ray_spec.nlist) == (local_spec.kind, local_spec.nlist)
    assert (ray_ids == local_ids).all()
    assert np.allclose(ray_scores, local_scores)
