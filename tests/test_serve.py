"""The HTTP API, against a real uvicorn server on 127.0.0.1 over a demo-model store."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from bioindex import Collection
from bioindex.demo.draw import draw_organism
from bioindex.demo.run import write_collection
from bioindex.demo.tree import SPECIES
from tests.conftest import LiveServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    from bioindex.serve.app import create_app

    root = write_collection(tmp_path_factory.mktemp("c"), per_species=3, seed=77)
    store = root / "store"
    with Collection.open(store, model="bioclip-demo", create=True, device="cpu") as col:
        col.index([root / "images"], metadata=root / "occurrences.csv", progress=False)
    app = create_app(store, device="cpu", max_upload_bytes=200_000)
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=30) as client:
        yield client, root
    app.state.collection.close()


def _photo(tmp_path: Path, index: int = 9) -> bytes:
    import io

    import numpy as np

    buffer = io.BytesIO()
    draw_organism(SPECIES[index], np.random.default_rng(5)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_health_info_metrics(server) -> None:
    client, _ = server
    assert client.get("/api/health").json() == {"status": "ok", "images": 144}
    info = client.get("/api/info").json()
    assert info["images_live"] == 144 and info["dim"] == 64 and "store" not in info
    assert "bioindex_requests_total" in client.get("/metrics").text
    assert client.get("/openapi.json").json()["info"]["title"] == "bioindex"


def test_text_and_taxon_search(server) -> None:
    client, _ = server
    target = SPECIES[3]
    text = client.get("/api/search/text", params={"q": target.taxon.caption(), "k": 3}).json()
    assert [r["scientific_name"] for r in text["results"]] == [target.name] * 3
    taxon = client.get(
        "/api/search/taxon",
        params={"name": target.taxon.family, "k": 5, "where": "institution_code=SYNTH"},
    ).json()
    assert taxon["results"] and all(r["institution_code"] == "SYNTH" for r in taxon["results"])
    assert {r["match"] for r in taxon["results"]} <= {"catalog family", "look-alike"}
    grouped = client.get(
        "/api/search/text", params={"q": "x", "k": 2, "group_by": "occurrence"}
    ).json()
    assert len(grouped["results"]) == 2 and grouped["results"][0]["images"] == 1


def test_upload_search_and_classify(server, tmp_path: Path) -> None:
    client, _ = server
    photo = _photo(tmp_path)
    found = client.post(
        "/api/search/image", params={"k": 4}, files={"file": ("q.jpg", photo, "image/jpeg")}
    ).json()
    assert len(found["results"]) == 4
    assert sum(r["scientific_name"] == SPECIES[9].name for r in found["results"]) >= 2
    result = client.post(
        "/api/classify",
        params={"rank": "family", "k": 2},
        files={"file": ("q.jpg", photo, "image/jpeg")},
    ).json()
    assert result["predictions"][0]["family"] == SPECIES[9].taxon.family
    assert result["ranks"]["species"]["name"] == SPECIES[9].name
    assert set(result["ranks"]) == {"kingdom", "phylum", "class", "order", "family", "genus",
                                    "species"}  # fmt: skip


def test_records_thumbnails_neighbours_taxa(server) -> None:
    client, _ = server
    record = client.get("/api/records/1").json()
    assert record["image_id"] == 1 and record["catalog_number"] and "shard" not in record
    thumb = client.get("/api/thumbnails/1", params={"size": 64})
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    import io

    from PIL import Image

    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 64
    neighbours = client.get("/api/search/id/1", params={"k": 3}).json()["results"]
    assert len(neighbours) == 3 and all(r["image_id"] != 1 for r in neighbours)
    vector = client.post("/api/search/vector", json={"vector": [1.0] + [0.0] * 63, "k": 2})
    assert vector.status_code == 200 and len(vector.json()["results"]) == 2
    as_text = client.post("/api/search/vector",
                          json={"vector": [1.0] + [0.0] * 63, "k": 2, "text": True})  # fmt: skip
    assert as_text.status_code == 200 and len(as_text.json()["results"]) == 2
    taxa = client.get("/api/taxa", params={"prefix": "rubr", "limit": 50}).json()["taxa"]
    names = {t["name"] for t in taxa}
    assert "Rubridae" in names and "Rubrostria oculatus" in names
    assert {t["rank"] for t in taxa} >= {"family", "genus", "species"}


@pytest.mark.parametrize("method, path, kwargs, status", [
    ("get", "/api/records/999999", {}, 404),
    ("get", "/api/thumbnails/999999", {}, 404),
    ("get", "/api/search/id/999999", {}, 404),
    ("get", "/api/records/../../etc/passwd", {}, 404),
    ("get", "/api/thumbnails/..%2F..%2Fetc%2Fpasswd", {}, 404),
    ("get", "/api/search/text", {"params": {"q": "x", "where": "family"}}, 400),
    ("get", "/api/search/text", {"params": {"q": "x", "where": "nope=1"}}, 400),
    ("get", "/api/search/text", {"params": {"q": "x", "k": 0}}, 400),
    ("get", "/api/search/text", {"params": {"q": "x", "k": 5000}}, 400),
    ("get", "/api/search/text", {"params": {"q": "  "}}, 400),
    ("get", "/api/search/text", {"params": {"q": "x", "group_by": "nope"}}, 400),
    ("get", "/api/search/taxon", {"params": {"name": "no such thing"}}, 400),
    ("get", "/api/search/taxon", {"params": {"name": "../../etc/passwd"}}, 400),
    ("get", "/api/search/text", {"params": {"q": "x", "where": "../../etc/passwd"}}, 400),
    ("get", "/api/search/text", {"params": {"q": "x", "where": "uri=/etc/passwd"}}, 400),
    ("get", "/api/search/id/../../etc/passwd", {}, 404),
    ("get", "/api/search/text", {"params": {"q": "x", "group_by": "../../etc"}}, 400),
    ("get", "/api/search/taxon", {"params": {"name": "Rubridae", "mode": "../x"}}, 400),
    ("get", "/api/taxa", {"params": {"prefix": "../../etc/passwd", "limit": 5}}, 200),
    ("get", "/api/thumbnails/1", {"params": {"size": "../../x"}}, 422),
    ("get", "/api/search/taxon", {"params": {"name": "Rubridae", "mode": "x"}}, 400),
    ("get", "/api/thumbnails/1", {"params": {"size": 5}}, 400),
    ("get", "/api/taxa", {"params": {"limit": 0}}, 400),
    ("post", "/api/search/vector", {"json": {"vector": "abc"}}, 400),
    ("post", "/api/search/vector", {"json": {"vector": [1.0, 2.0]}}, 400),
    ("post", "/api/search/vector", {"json": {"vector": [0.0] * 64}}, 400),
    ("post", "/api/search/vector", {"json": {"vector": [1.0] * 64, "text": "yes"}}, 400),
    ("post", "/api/search/image", {"files": {"file": ("x.jpg", b"not an image", "image/jpeg")}},
     415),
    ("post", "/api/search/image", {"files": {"file": ("x.jpg", b"\xff" * 300_000, "image/jpeg")}},
     413),
    ("post", "/api/search/image", {"files": {"file": ("x.jpg", b"\xff" * 2_000_000,
                                                      "image/jpeg")}}, 413),
    ("post", "/api/search/image", {}, 422),
    ("post", "/api/classify", {"files": {"file": ("../../x.png", b"GIF89a", "image/png")}}, 415),
    ("post", "/api/classify", {"params": {"rank": "tribe"},
                               "files": {"file": ("q.jpg", "PHOTO", "image/jpeg")}}, 400),
    ("post", "/api/classify", {"params": {"min_confidence": 5},
                               "files": {"file": ("q.jpg", "PHOTO", "image/jpeg")}}, 400),
    ("post", "/api/classify", {"params": {"near": "91,1"},
                               "files": {"file": ("q.jpg", "PHOTO", "image/jpeg")}}, 400),
    ("post", "/api/classify", {"params": {"near": "here"},
                               "files": {"file": ("q.jpg", "PHOTO", "image/jpeg")}}, 400),
    ("post", "/api/classify", {"params": {"method": "few-shot", "labels": "a,b"},
                               "files": {"file": ("q.jpg", "PHOTO", "image/jpeg")}}, 400),
])  # fmt: skip
def test_bad_input_is_4xx_json(server, tmp_path, method, path, kwargs, status) -> None:
    client, _ = server
    if "files" in kwargs and kwargs["files"]["file"][1] == "PHOTO":
        kwargs = {**kwargs, "files": {"file": ("q.jpg", _photo(tmp_path), "image/jpeg")}}
    response = getattr(client, method)(path, **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    if status == 200:  # a traversal string as a search prefix is just a name that matches nothing
        assert body == {"taxa": []}
        return
    assert ("error" in body) or ("detail" in body)
    assert "Traceback" not in response.text
    assert "--" not in body.get("error", ""), "a command-line option named to an HTTP client"


@pytest.mark.parametrize("path", ["/api/classify", "/api/search/image"])
def test_an_unreadable_view_is_named_with_why(server, tmp_path, path) -> None:
    """Three views of a specimen, one cut short in transfer: the error said "not a readable
    image (OSError)", neither which upload nor why."""
    client, _ = server
    photo = _photo(tmp_path)
    files = [("file", ("dorsal.jpg", photo, "image/jpeg")),
             ("file", ("ventral.jpg", photo[: len(photo) // 2], "image/jpeg")),
             ("file", ("lateral.jpg", photo, "image/jpeg"))]  # fmt: skip
    response = client.post(path, files=files)
    assert response.status_code == 415, response.text
    error = response.json()["error"]
    assert error.startswith("ventral.jpg: ") and "truncated" in error, error
    not_an_image = client.post(path, files={"file": ("notes.txt", b"field notes", "text/plain")})
    error = not_an_image.json()["error"]
    assert not_an_image.status_code == 415 and error.startswith("notes.txt: "), error
    assert "0x" not in error and "BytesIO" not in error, "a server's memory address"


def test_a_thumbnail_follows_its_file(server) -> None:
    """Thumbnails are kept (by the file's size and mtime): asked again they are the same,
    and a file changed since is shrunk again, never shown from before."""
    client, root = server
    record = client.get("/api/records/7").json()
    path = next(p for p in (root / "images").rglob("*") if p.name == Path(record["path"]).name)
    original = path.read_bytes()
    first = client.get("/api/thumbnails/7", params={"size": 48}).content
    assert client.get("/api/thumbnails/7", params={"size": 48}).content == first
    try:
        path.write_bytes(_photo(root, index=30))  # another species, another file
        changed = client.get("/api/thumbnails/7", params={"size": 48})
        assert changed.status_code == 200 and changed.content != first
    finally:
        path.write_bytes(original)
    assert client.get("/api/thumbnails/7", params={"size": 48}).content == first


def test_duplicate_groups_follow_the_store(tmp_path: Path, tiny_model: str) -> None:
    """Groups are found once per threshold and kept, but not past a change to the store: a
    copy indexed while the server runs is in the next answer."""
    import shutil

    from bioindex.serve.app import create_app
    from tests.conftest import draw_images

    photos = draw_images(tmp_path / "photos", 6, seed=11)
    store = tmp_path / "store"
    with Collection.open(store, model=tiny_model, create=True) as col:
        col.index([tmp_path / "photos"], progress=False)
    app = create_app(store, device="cpu")
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=30) as client:
        before = client.get("/api/duplicates", params={"threshold": 0.999}).json()
        assert before["groups"] == 0 and before["results"] == []
        shutil.copy(photos[2], tmp_path / "photos" / "copy.jpg")
        with Collection.open(store, model=tiny_model) as col:
            col.index([tmp_path / "photos"], progress=False)
        after = client.get("/api/duplicates", params={"threshold": 0.999}).json()
        assert after["groups"] == 1
        kinds = [(Path(m["path"]).name, m["kind"]) for m in after["results"][0]["members"]]
        assert sorted(kinds) == sorted([(photos[2].name, "anchor"), ("copy.jpg", "exact")])
    app.state.collection.close()


def _health_during_a_change(app, ask, started, change) -> tuple[httpx.Response, dict, float]:
    """`ask(client)` sent in a thread; once it has `started` its slow part, `change()` (a
    write to the store) and then /api/health: (ask's response, health, seconds it took)."""
    import threading
    import time

    answers: list = []
    with LiveServer(app) as live:
        def send() -> None:
            with httpx.Client(base_url=live.url, timeout=60) as client:
                answers.append(ask(client))

        asking = threading.Thread(target=send)
        asking.start()
        assert started.wait(30)
        change()
        begun = time.monotonic()
        with httpx.Client(base_url=live.url, timeout=60) as client:
            health = client.get("/api/health").json()
        waited = time.monotonic() - begun
        asking.join()
    app.state.collection.close()
    return answers[0], health, waited


@pytest.mark.slow
def test_a_search_for_duplicates_holds_up_no_one(tmp_path: Path, tiny_model: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding duplicates takes about a minute per million images. As a reader of the served
    store it held every request behind the next move to a newer generation that long: a
    copy indexed meanwhile made /api/health wait for the whole search. (The search is
    slowed here to stand for a large store.)"""
    import shutil
    import threading
    import time

    from bioindex import collection as collection_module
    from bioindex.search import dedup
    from bioindex.serve import app as served
    from bioindex.serve.app import create_app
    from tests.conftest import draw_images

    real = dedup.find_duplicates
    started = threading.Event()

    def slow(store, threshold=0.95):
        started.set()
        time.sleep(6)
        return real(store, threshold)

    monkeypatch.setattr(served, "find_duplicates", slow, raising=False)
    monkeypatch.setattr(collection_module, "find_duplicates", slow)
    photos = draw_images(tmp_path / "photos", 4, seed=12)
    store = tmp_path / "store"
    with Collection.open(store, model=tiny_model, create=True) as col:
        col.index([tmp_path / "photos"], progress=False)

    def change() -> None:
        shutil.copy(photos[1], tmp_path / "photos" / "copy.jpg")
        with Collection.open(store, model=tiny_model) as col:
            col.index([tmp_path / "photos"], progress=False)

    app = create_app(store, device="cpu")
    answer, health, waited = _health_during_a_change(
        app, lambda client: client.get("/api/duplicates", params={"threshold": 0.999}),
        started, change)  # fmt: skip
    assert health["images"] == 5 and waited < 3.0, (health, waited)
    assert answer.status_code == 200 and answer.json()["groups"] == 0


@pytest.mark.slow
def test_a_head_in_training_holds_up_no_one(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A few-shot request on a store whose head is not trained yet trains it (minutes on a
    large labelled store); it did so inside the request, as a reader of the served store,
    and a store change meanwhile held every other request for as long. (Training is slowed
    here to stand for a large store.)"""
    import shutil
    import threading
    import time

    from bioindex.demo.world import write_world
    from bioindex.search import fewshot
    from bioindex.serve.app import create_app
    from tests.conftest import draw_images

    real = fewshot.fit_head
    started = threading.Event()

    def slow(*args, **kwargs):
        started.set()
        time.sleep(6)
        return real(*args, **kwargs)

    monkeypatch.setattr(fewshot, "fit_head", slow)
    root = write_world(tmp_path / "w", SPECIES[:6], 2, seed=5, look="slide-film")
    store = tmp_path / "store"
    with Collection.open(store, model="bioclip-demo", create=True, device="cpu") as col:
        col.index([root / "images"], metadata=root / "occurrences.csv", progress=False)
    photo = next((root / "images").glob("*.png")).read_bytes()
    def change() -> None:
        draw_images(tmp_path / "more", 1, seed=3)
        shutil.copytree(tmp_path / "more", root / "images" / "more")
        with Collection.open(store, device="cpu") as col:
            col.index([root / "images"], metadata=root / "occurrences.csv", progress=False)

    app = create_app(store, device="cpu")
    answer, health, waited = _health_during_a_change(
        app, lambda client: client.post("/api/classify", params={"method": "few-shot"},
                                        files={"file": ("q.png", photo, "image/png")}),
        started, change)  # fmt: skip
    assert health["images"] == 13 and waited < 3.0, (health, waited)
    assert answer.status_code == 200, answer.text
    assert answer.json()["answer"]["band"] in ("confident", "uncertain", "unknown")


def test_a_head_is_trained_once_where_the_store_cannot_keep_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """On a store whose heads cannot be kept (a read-only share, no user cache), the server
    trained the few-shot head for the first request on a store of its own, and then again
    as the served store, which could not read it back: minutes, twice."""
    from fastapi.testclient import TestClient

    from bioindex.demo.world import write_world
    from bioindex.search import fewshot
    from bioindex.serve.app import create_app
    from bioindex.store.layout import HEADS_DIR

    real = fewshot.fit_head
    trained: list[str] = []

    def counted(method, *args, **kwargs):
        trained.append(method)
        return real(method, *args, **kwargs)

    monkeypatch.setattr(fewshot, "fit_head", counted)
    root = write_world(tmp_path / "w", SPECIES[:4], 2, seed=5, look="slide-film")
    store = tmp_path / "store"
    with Collection.open(store, model="bioclip-demo", create=True, device="cpu") as col:
        col.index([root / "images"], metadata=root / "occurrences.csv", progress=False)
    (store / HEADS_DIR).write_text("not a folder: no head can be saved here")
    (tmp_path / "cache").write_text("nor in the user's cache")
    monkeypatch.setenv("BIOINDEX_CACHE_DIR", str(tmp_path / "cache"))
    photo = next((root / "images").glob("*.png")).read_bytes()
    app = create_app(store, device="cpu", hosts=("testserver",))
    try:
        with TestClient(app) as client:
            for _ in range(2):
                answer = client.post("/api/classify", params={"method": "few-shot"},
                                     files={"file": ("q.png", photo, "image/png")})  # fmt: skip
                assert answer.status_code == 200, answer.text
    finally:
        app.state.collection.close()
    assert trained == ["few-shot"]
