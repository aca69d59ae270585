"""The server facing whoever reaches it (issue #16): fuzzed requests over its OpenAPI schema
never get a 5xx or a traceback and do not grow its memory; oversized bodies are refused even
when chunked; every answer carries the security headers; a foreign Host is refused; a bind
beyond loopback needs a token or --public."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from PIL import Image

from bioindex import Collection
from tests.conftest import LiveServer, draw_images, shared

FUZZ_EXAMPLES = 180  # per operation: over 2,000 requests over the 14 operations
TRACEBACK = re.compile(r"Traceback|File \"|line \d+, in ")


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_model: str):
    from bioindex.serve.app import create_app

    root = tmp_path_factory.mktemp("hardening")
    rows = ["file,scientificName,family"]
    for i, path in enumerate(draw_images(root / "photos", 24, seed=9)):
        name = ("Ursus arctos", "Ursidae") if i % 2 else ("Felis catus", "Felidae")
        rows.append(f"{path.relative_to(root / 'photos')},{name[0]},{name[1]}")
    (root / "meta.csv").write_text("\n".join(rows) + "\n")
    with Collection.open(root / "store", model=tiny_model, create=True) as col:
        col.index([root / "photos"], metadata=root / "meta.csv", progress=False)
    app = create_app(root / "store", device="cpu", max_upload_bytes=300_000,
                     max_pixels=2_000_000)  # fmt: skip
    with LiveServer(app) as server:
        yield server.url, root
    app.state.collection.close()


@pytest.fixture(scope="module")
def api_schema(live):
    url, root = live
    SEEN["root"] = str(root)
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    schema.config.generation.update(modes=list(schemathesis.GenerationMode),
                                    max_examples=FUZZ_EXAMPLES)  # fmt: skip
    return schema


fuzzed = schemathesis.pytest.from_fixture("api_schema")
SEEN: dict[str, Any] = {"requests": 0, "rss_before": 0.0, "root": ""}


@pytest.mark.slow
@fuzzed.parametrize()
@settings(max_examples=FUZZ_EXAMPLES, deadline=None,
          suppress_health_check=list(HealthCheck))  # fmt: skip
def test_fuzzed_requests_never_fail_the_server(case) -> None:
    if not SEEN["rss_before"]:
        SEEN["rss_before"] = _rss_mb()
    response = case.call(timeout=60)
    SEEN["requests"] += 1
    kind = response.headers.get("content-type") or ""
    kind = kind[0] if isinstance(kind, list) else kind  # schemathesis lists header values
    text = "" if kind.startswith("image/") else response.content.decode("utf-8", "replace")
    assert response.status_code < 500, (case.method, case.path, text[:300])
    assert not TRACEBACK.search(text), text[:300]
    assert not SEEN["root"] or SEEN["root"] not in text, text[:300]  # the server's folders
    if response.status_code >= 400 and "json" in kind:
        assert set(response.json()) == {"error"}, text[:300]


@pytest.mark.slow
def test_fuzzing_covered_enough_requests_and_memory_held(live) -> None:
    """Runs after the fuzzing (same module, file order): the server lives in this process."""
    if not SEEN["requests"]:
        pytest.skip("the fuzzing test did not run (deselected)")
    growth = _rss_mb() - SEEN["rss_before"]
    print(f"fuzzed requests: {SEEN['requests']}, server RSS growth {growth:.0f} MB")
    assert SEEN["requests"] >= 2000  # some operations have few distinct inputs
    assert growth < 200


def _raw(url: str, request: bytes) -> bytes:
    host, port = url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_chunked_bodies_over_the_limit_are_refused(live) -> None:
    url, _ = live
    port = url.rsplit(":", 1)[1]
    chunk = b'{"vector": [' + b"0.5, " * 20_000
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(8)) + b"0\r\n\r\n"
    answer = _raw(url, b"POST /api/search/vector HTTP/1.1\r\nHost: 127.0.0.1:" + port.encode()
                  + b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
                  b"Connection: close\r\n\r\n" + body)  # fmt: skip
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"error"' in answer


def test_headers_host_and_client_errors(live) -> None:
    url, _ = live
    with httpx.Client(base_url=url, timeout=30) as client:
        for path in ("/", "/api/info", "/api/search/text?q=x&k=0", "/nowhere"):
            headers = client.get(path).headers
            assert "frame-ancestors 'none'" in headers["content-security-policy"]
            assert headers["x-content-type-options"] == "nosniff"
            assert headers["referrer-policy"] == "no-referrer"
        foreign = client.get("/api/info", headers={"Host": "evil.example"})
        assert foreign.status_code == 400 and "Host" in foreign.json()["error"]
        bad_k = client.post("/api/search/vector", json={"vector": [0.1] * 32, "k": "x"})
        assert bad_k.status_code == 400 and set(bad_k.json()) == {"error"}
        missing = client.get("/api/search/text")  # no q: a validation error, said as error
        assert missing.status_code == 422 and "q" in missing.json()["error"]
        info = client.get("/api/info").json()
        assert "store" not in info
        hits = client.get("/api/search/text", params={"q": "a photo", "k": 3}).json()["results"]
        assert hits and all("uri" not in h and h["path"].startswith("photos/") for h in hits)
        record = client.get(f"/api/records/{hits[0]['image_id']}").json()
        assert "uri" not in record and record["path"] == hits[0]["path"]
        docs = client.get("/docs").text
        assert "cdn" not in docs.lower() and "/static-offline-docs/" in docs
        assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200


def test_made_up_methods_do_not_grow_the_metrics(live) -> None:
    # Each request's method became a metrics series: 300 made-up methods, 300 more
    # lines on every scrape and entries kept for good.
    url, _ = live
    with httpx.Client(base_url=url, timeout=30) as client:
        before = client.get("/metrics").text.count("\n")
        for i in range(300):
            assert client.request(f"X{i}", "/api/info").status_code in (400, 405)
        after = client.get("/metrics").text
    assert after.count("\n") <= before + 4, after[-500:]
    assert 'method="other"' in after and 'method="X7"' not in after


def test_texts_past_what_the_model_reads_are_refused(live) -> None:
    # A 100 kB query was taken (the model reads its first 77 tokens) and kept in memory
    # with 4,095 others; 1,000 made-up labels were each one more text encode.
    url, root = live
    upload = {"file": ("a.png", next((root / "photos").rglob("*.png")).read_bytes())}
    with httpx.Client(base_url=url, timeout=60) as client:
        for path, field in (("/api/search/text", "q"), ("/api/search", "q"),
                            ("/api/search/taxon", "name")):  # fmt: skip
            long = client.get(path, params={field: "a" * 1001})
            assert long.status_code == 422 and "1000" in long.json()["error"], long.text
            taken = client.get(path, params={field: "a" * 1000}).status_code
            assert taken == (200 if field == "q" else 400)  # no taxon is named so: a 400
        many = client.post("/api/classify", params={"labels": ",".join(
            f"label {i}" for i in range(1001))}, files=upload)  # fmt: skip
        assert many.status_code == 400 and "at most 1000 labels" in many.json()["error"]
        wordy = client.post("/api/classify", params={"labels": "a,b" + "c" * 1000},
                            files=upload)  # fmt: skip
        assert wordy.status_code == 400, wordy.text
        fine = client.post("/api/classify", params={"labels": "a cat,a bear"}, files=upload)
        assert fine.status_code == 200, fine.text


def test_new_custom_labels_are_bounded_per_request_and_kept_off_disk(
        live, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """1,000 made-up labels were 80,000 texts to encode in one request (~14 minutes of a
    BioCLIP-sized text tower on two cores), and each was written to the user's cache for
    good, which every such request rewrote whole."""
    from bioindex.search.labels import labels_from_strings

    monkeypatch.setenv("BIOINDEX_CACHE_DIR", str(tmp_path / "cache"))
    url, root = live
    upload = {"file": ("a.png", next((root / "photos").rglob("*.png")).read_bytes())}
    novel = [f"made-up label {i}" for i in range(60)]  # 4,800 texts: over 4,096
    with httpx.Client(base_url=url, timeout=120) as client:
        def ask(labels: list[str], **params: str) -> httpx.Response:
            return client.post("/api/classify", params={"labels": ",".join(labels), **params},
                               files=upload)  # fmt: skip

        refused = ask(novel)
        assert refused.status_code == 400, refused.text
        assert "60 labels not encoded before" in refused.json()["error"]
        assert "at most 4096" in refused.json()["error"]
        assert "templates=one" in refused.json()["error"]
        assert ask(novel, templates="one").status_code == 200
        first = ask(novel[:50])  # 4,000 texts
        assert first.status_code == 200, first.text
        assert ask(novel).status_code == 200  # 50 of them encoded already: 800 more texts
        assert ask(novel[:50]).json() == first.json()
        assert not list((tmp_path / "cache").rglob("*.npy"))  # nothing written to disk
        # Labels the user's own cache holds cost the server nothing to encode.
        stored = [f"stored label {i}" for i in range(60)]
        with Collection.open(root / "store", read_only=True) as col:
            col.with_label_vectors(labels_from_strings(stored))
        assert list((tmp_path / "cache").rglob("*.npy"))
        assert ask(stored).status_code == 200


def test_ids_no_integer_column_holds_are_not_found(live) -> None:
    """The fuzzer's /api/thumbnails/314702996921268396868043191529236332544 was a 500."""
    url, _ = live
    with httpx.Client(base_url=url, timeout=30) as client:
        for huge in (2**63, 314702996921268396868043191529236332544, -(2**130)):
            for path in (f"/api/thumbnails/{huge}", f"/api/records/{huge}",
                         f"/api/search/id/{huge}"):  # fmt: skip
                answer = client.get(path)
                assert answer.status_code == 404, (path, answer.text)
                assert "no image with id" in answer.json()["error"]


def _png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (width, height), 255).save(out, "PNG", optimize=True)
    return out.getvalue()


def test_info_names_no_path_of_the_server(live) -> None:
    """/api/info dropped the store's path but still gave the model's folder
    (local-dir:/home/…/weights) and every indexed folder's absolute path (last_run's
    sources): where this server keeps things, to anyone who asks."""
    url, root = live
    info = httpx.get(f"{url}/api/info", timeout=30).json()
    text = json.dumps(info)
    assert str(root) not in text and "/tmp" not in text, text
    assert info["model"].startswith("local-dir:") and info["model"].endswith("tiny")
    assert info["last_run"]["sources"] == ["photos"]


def test_uploads_over_the_pixel_cap_are_refused_before_decoding(live, tmp_path) -> None:
    """A PNG over the cap is refused from its header; a JPEG over it (a phone's 108 MP
    photo, dropped on the page) was refused too, though it decodes at reduced scale under
    the cap: it is answered, as the same picture at that scale is."""
    url, root = live
    big = _png(3000, 3000)  # 9 MP: a few KB of PNG, 27 MB once decoded
    photo = Image.open(shared("camera-trap", "ocelot.jpg")).convert("RGB")
    large = io.BytesIO()
    photo.resize((1800, 1380)).save(large, "JPEG", quality=60)  # 2.5 MP, over the 2 MP cap
    assert len(large.getvalue()) < 300_000  # the server's body limit
    half = Image.open(io.BytesIO(large.getvalue()))
    half.draft("RGB", (900, 690))  # what libjpeg gives at 1/2 scale
    half.save(tmp_path / "half.png")
    with httpx.Client(base_url=url, timeout=30) as client:
        refused = client.post("/api/search/image", files={"file": ("big.png", big, "image/png")})
        assert refused.status_code == 413 and "MP cap" in refused.json()["error"]
        small = _png(600, 400)
        fine = client.post("/api/search/image", files={"file": ("ok.png", small, "image/png")})
        assert fine.status_code == 200
        answer = client.post("/api/search/image",
                             files={"file": ("phone.jpg", large.getvalue(), "image/jpeg")})
    assert answer.status_code == 200, answer.text
    with Collection.open(root / "store", read_only=True) as col:
        expected = [(h.image_id, h.score) for h in col.search_image(tmp_path / "half.png")]
    found = [(h["image_id"], h["score"]) for h in answer.json()["results"]]
    assert [i for i, _ in found] == [i for i, _ in expected] and found
    assert all(abs(a - b) < 1e-5 for (_, a), (_, b) in zip(found, expected))


def test_token_is_required_and_the_page_stays_reachable(live) -> None:
    from bioindex.serve.app import create_app

    _, root = live
    app = create_app(root / "store", device="cpu", token="s3cret")
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/").status_code == 200  # the page asks for the token itself
        assert client.get("/api/info").status_code == 401
        wrong = client.get("/api/info", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "token" in wrong.json()["error"]
        assert client.get("/api/info", headers={"Authorization": "Bearer s3cret"}).is_success
        with httpx.Client(base_url=server.url, cookies={"bioindex_token": "s3cret"}) as page:
            assert page.get("/api/info").is_success  # the cookie the page sets
    app.state.collection.close()


@pytest.mark.parametrize("args, expected", [
    (["--host", "0.0.0.0"], "give --token SECRET"),
])  # fmt: skip
def test_binding_beyond_loopback_needs_a_token_or_public(live, args, expected) -> None:
    _, root = live
    done = subprocess.run([sys.executable, "-m", "bioindex.cli", "serve", "-s",
                           str(root / "store"), *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "BIOINDEX_TOKEN": ""})  # fmt: skip
    assert done.returncode == 1 and expected in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("path", [
    "/api/thumbnails/..%2F..%2Fetc%2Fpasswd", "/api/records/..%2Fmanifest.json",
    "/api/search/id/..%2F..", "/page.js/..%2F..%2F..%2Fetc%2Fpasswd", "/../../etc/passwd",
    "/static-offline-docs/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
])  # fmt: skip
def test_paths_from_requests_never_reach_the_disk(live, path: str) -> None:
    url, _ = live
    response = httpx.get(url + path, timeout=30)
    assert response.status_code in (404, 422) and "root:" not in response.text


@pytest.mark.slow
def test_two_hundred_clients_at_once(live) -> None:
    from concurrent.futures import ThreadPoolExecutor

    url, _ = live
    limits = httpx.Limits(max_connections=200)
    with httpx.Client(base_url=url, timeout=120, limits=limits) as client, \
            ThreadPoolExecutor(200) as pool:  # fmt: skip
        statuses = list(pool.map(lambda i: client.get(
            "/api/search/text", params={"q": f"a photo {i % 20}", "k": 5}).status_code,
            range(200)))  # fmt: skip
    assert statuses == [200] * 200


def test_a_store_served_by_a_bare_name_leaves_the_word_store_alone(
        tmp_path: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """`bioindex serve -s store` hid the path "store" in every error: "the this store's own
    names", "a this store that …"."""
    from bioindex.serve.app import create_app

    draw_images(tmp_path / "photos", 2, seed=3)
    monkeypatch.chdir(tmp_path)
    with Collection.open("store", model=tiny_model, create=True) as col:
        col.index(["photos"], progress=False)
    app = create_app("store", device="cpu")
    upload = {"file": ("a.png", next((tmp_path / "photos").rglob("*.png")).read_bytes())}
    try:
        with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
            answer = client.post("/api/classify", params={"templates": "one"}, files=upload)
    finally:
        app.state.collection.close()
    assert answer.status_code == 400, answer.text
    assert "the store's own names" in answer.json()["error"], answer.text
    assert str(tmp_path) not in answer.text


def test_errors_do_not_say_where_the_server_keeps_its_files(tmp_path: Path,
                                                            tiny_model: str) -> None:  # fmt: skip
    """A plain folder's store asked to classify said "the catalog of /srv/…/store names no
    taxa": the server's layout, to whoever asks. /api/info already hid it."""
    from bioindex.serve.app import create_app

    draw_images(tmp_path / "photos", 4, seed=2)
    with Collection.open(tmp_path / "store", model=tiny_model, create=True) as col:
        col.index([tmp_path / "photos"], progress=False)
    app = create_app(tmp_path / "store", device="cpu")
    upload = {"file": ("a.png", next((tmp_path / "photos").rglob("*.png")).read_bytes())}
    model_folder = tiny_model.removeprefix("local-dir:")
    try:
        with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
            answers = [client.post("/api/classify", files=upload),
                       client.post("/api/classify", params={"method": "knn"}, files=upload),
                       client.post("/api/classify", params={"rank": "genus"}, files=upload)]
    finally:
        app.state.collection.close()
    for answer in answers:
        assert answer.status_code == 400 and "names no taxa" in answer.json()["error"]
        assert str(tmp_path) not in answer.text and model_folder not in answer.text, answer.text
    assert "the catalog of this store names no taxa" in answers[0].json()["error"]
