"""Many requests at once: the server answers them side by side, batches their model calls,
and answers exactly what one-at-a-time calls answer."""

from __future__ import annotations

import io
import json
import shutil
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bioindex import Collection
from tests.conftest import LiveServer, draw_images

TEXTS = ["a photo of a red circle"] * 8 + [f"a photo of shape {n}" for n in range(8)]


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> tuple[Path, Path]:
    """Two copies of one store, made before any query: neither has a cached text vector."""
    root = tmp_path_factory.mktemp("concurrent")
    rows = ["file,scientificName"]
    for i, path in enumerate(draw_images(root / "photos", 40, seed=5)):
        rows.append(f"{path.relative_to(root / 'photos')},{('Felis catus', 'Ursus arctos')[i % 2]}")
    (root / "meta.csv").write_text("\n".join(rows) + "\n")
    with Collection.open(root / "one", model=tiny_model, create=True) as collection:
        collection.index([root / "photos"], metadata=root / "meta.csv", progress=False)
    shutil.copytree(root / "one", root / "other")
    return root / "one", root / "other"


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def _post_image(url: str, data: bytes) -> dict:
    boundary = "bioindexboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"q.png\"\r\nContent-Type: image/png\r\n\r\n").encode() + data + \
        f"\r\n--{boundary}--\r\n".encode()  # fmt: skip
    request = urllib.request.Request(url, data=body, headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def _requests(base: str, pictures: list[bytes]) -> list:
    texts = [lambda t=t: _get(f"{base}/api/search/text?q={urllib.request.quote(t)}&k=10")
             for t in TEXTS]  # fmt: skip
    taxa = [lambda: _get(f"{base}/api/search?q=Felis%20catus&k=5")] * 4
    images = [lambda p=p: _post_image(f"{base}/api/search/image?k=5", p) for p in pictures]
    return texts + taxa + images


def _answers(store: Path, workers: int, pictures: list[bytes]) -> tuple[list, list]:
    from bioindex.serve.app import create_app

    app = create_app(store, device="cpu", workers=workers)
    if workers > 1:
        # A text encode as slow as a BioCLIP-sized one on a CPU: the requests that come
        # meanwhile queue behind it. The tiny model's 1 ms let each text of a loaded CI run
        # arrive alone (batches all of one) though they were sent together.
        model = app.state.collection.model._model
        encode = model.encode_texts
        model.encode_texts = lambda texts: (time.sleep(0.05), encode(texts))[1]
    try:
        with LiveServer(app) as live:
            calls = _requests(live.url, pictures)
            if workers == 1:
                answers = [call() for call in calls]
            else:
                start = threading.Barrier(len(calls))

                def together(call):
                    start.wait(timeout=30)
                    return call()

                with ThreadPoolExecutor(len(calls)) as pool:
                    answers = list(pool.map(together, calls))
        batches = getattr(app.state.collection.model, "batches", {})
        return answers, [list(batches.get(kind, [])) for kind in ("texts", "images")]
    finally:
        app.state.collection.close()


def test_concurrent_requests_answer_what_serial_ones_do(stores) -> None:
    pictures = []
    for path in draw_images(stores[0].parent / "queries", 4, seed=77):
        out = io.BytesIO()
        Image.open(path).convert("RGB").save(out, "PNG")
        pictures.append(out.getvalue())
    serial, _ = _answers(stores[0], 1, pictures)
    together, (text_batches, _) = _answers(stores[1], 16, pictures)
    assert max(text_batches) > 1, text_batches  # the texts met in a model call
    for mine, theirs in zip(together, serial, strict=True):
        assert [r["image_id"] for r in mine["results"]] == [r["image_id"]
                                                             for r in theirs["results"]]
        # A batched matrix product sums in another order: equal to float rounding.
        assert np.allclose([r["score"] for r in mine["results"]],
                           [r["score"] for r in theirs["results"]], atol=2e-6)
        assert mine.get("query_as") == theirs.get("query_as")
    assert len({json.dumps(a["results"]) for a in together[:8]}) == 1  # one text, one answer


class _SlowCountingModel:
    """The real model, its text encodes counted and slowed so that callers overlap."""

    def __init__(self, model):
        self._model, self.texts = model, []

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def encode_texts(self, texts):
        self.texts.extend(texts)
        time.sleep(0.3)
        return self._model.encode_texts(texts)


def test_a_text_asked_by_many_at_once_is_encoded_once(stores) -> None:
    """Each encoding of one text in a batch of another size differs by float rounding,
    so concurrent identical queries encoded separately got two answers (seen in CI)."""
    with Collection.open(stores[0], device="cpu") as collection:
        counting = _SlowCountingModel(collection.model)
        collection.use_model(counting)
        start = threading.Barrier(8)

        def embed(i: int) -> np.ndarray:
            start.wait(timeout=30)
            return collection.embed_texts(["a photo of a blue square", f"shape {i % 2}"])

        with ThreadPoolExecutor(8) as pool:
            vectors = list(pool.map(embed, range(8)))
    assert sorted(counting.texts) == ["a photo of a blue square", "shape 0", "shape 1"]
    assert all((v[0] == vectors[0][0]).all() for v in vectors)


def test_image_encodes_of_concurrent_callers_share_a_model_call(tiny_model: str) -> None:
    import torch

    from bioindex.models import load_model
    from bioindex.serve.concurrency import BatchingModel

    model = load_model(tiny_model, device="cpu")
    size = model.identity.image_size
    pictures = torch.rand(8, 3, size, size, generator=torch.Generator().manual_seed(0))
    alone = [model.encode_images(pictures[i : i + 1])[0] for i in range(8)]
    batching = BatchingModel(model, window=0.05)
    start = threading.Barrier(8)

    def encode(i: int) -> np.ndarray:
        start.wait(timeout=30)
        return batching.encode_images(pictures[i : i + 1])[0]

    try:
        with ThreadPoolExecutor(8) as pool:
            together = list(pool.map(encode, range(8)))
    finally:
        batching.close()
    assert max(batching.batches["images"]) > 1 and sum(batching.batches["images"]) == 8
    assert np.allclose(np.stack(together), np.stack(alone), atol=1e-6)


def test_a_refresh_catches_the_index_up_before_readers_search(tmp_path: Path) -> None:
    """Readers search side by side after a move; the move itself must leave nothing for a
    search to mutate (two searches catching one index up at once gave a 500 under load)."""
    from bioindex.store import Store
    from tests.test_store import MODEL, _records, _unit

    writer = Store.create(tmp_path / "s", MODEL)
    writer.commit(_records([f"a{i}" for i in range(50)]), _unit(50))
    writer.save_index()
    reader = Store.open(tmp_path / "s", read_only=True)
    try:
        reader.index()
        writer.commit(_records([f"b{i}" for i in range(50)]), _unit(50, seed=4))
        writer.mark_deleted([1, 2, 3])
        assert reader.refresh()
        assert reader._live.version == reader.snap.vectors_version  # nothing left to catch up
        queries = _unit(32, seed=5)
        with ThreadPoolExecutor(8) as pool:
            found = list(pool.map(lambda q: reader.search(q[None], 5)[1][0], queries))
        assert reader.index().ntotal == reader.live_count() == 97
        assert all(len(ids) == 5 and not {1, 2, 3} & set(ids.tolist()) for ids in found)
    finally:
        reader.close()
        writer.close()


def test_uploads_of_concurrent_requests_share_a_model_call(stores, monkeypatch) -> None:
    """An upload's encode was waited for on the server's event loop: while one image was in
    the model, no other request was read, and uploads never met in a model call (every
    image batch held one image). The model is slowed to a BioCLIP-on-CPU pace here."""
    from bioindex.models import EmbeddingModel

    real = EmbeddingModel.encode_images

    def slow(self, batch):
        time.sleep(0.3)
        return real(self, batch)

    monkeypatch.setattr(EmbeddingModel, "encode_images", slow)
    pictures = []
    for path in draw_images(stores[0].parent / "uploads", 6, seed=78):
        out = io.BytesIO()
        Image.open(path).convert("RGB").save(out, "PNG")
        pictures.append(out.getvalue())
    from bioindex.serve.app import create_app

    app = create_app(stores[1], device="cpu", workers=8)
    try:
        with LiveServer(app) as live:
            start = threading.Barrier(len(pictures))

            def upload(data: bytes) -> dict:
                start.wait(timeout=30)
                return _post_image(f"{live.url}/api/search/image?k=3", data)

            with ThreadPoolExecutor(len(pictures)) as pool:
                answers = list(pool.map(upload, pictures))
        batches = list(app.state.collection.model.batches["images"])
    finally:
        app.state.collection.close()
    assert all(len(a["results"]) == 3 for a in answers)
    assert sum(batches) == 6 and max(batches) > 1, batches
