"""The first hour of a new user on the store most people make first: a plain folder of photos,
no metadata. Every interface (CLI, Python API, HTTP API, the page in Chromium) answers free
text, a taxon by name, an upload, classify with one bad file, dedup and info — with results
or a one-line error that names the remedy for that interface."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from bioindex import Collection
from bioindex.cli import main
from bioindex.errors import BioindexError, NoTaxaError
from tests.conftest import SHARED_FIXTURES, LiveServer, draw_images
from tests.test_web import CHROMIUM, FLAGS, screenshot_folder

NAME = "Loxodonta africana"  # a Latin name no catalog row carries here


def _photos(folder: Path) -> Path:
    """Real camera-trap photos when the shared fixtures are there, drawn ones otherwise;
    plus an exact copy (for dedup) and a file that is not an image."""
    folder.mkdir(parents=True)
    trap = SHARED_FIXTURES / "camera-trap"
    if trap.is_dir():
        for photo in sorted(trap.glob("*.jpg")):
            shutil.copy(photo, folder / photo.name)
        shutil.copy(trap / "ocelot.jpg", folder / "ocelot-copy.jpg")
    else:
        drawn = draw_images(folder / "drawn", 12, seed=5)
        shutil.copy(drawn[0], folder / f"copy{drawn[0].suffix}")
    (folder / "notes.jpg").write_text("field notes, not a picture")
    return folder


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("first-hour")
    photos = _photos(root / "photos")
    result = CliRunner().invoke(main, ["index", str(photos), "-s", str(root / "store"),
                                       "--model", "bioclip-demo", "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    assert "failed" in result.output and "images/s" in result.output
    return root, photos


def _cli(*args: str, columns: int = 80) -> object:
    return CliRunner().invoke(main, list(args), env={"COLUMNS": str(columns)})


def test_cli_first_hour(plain) -> None:
    root, photos = plain
    store = str(root / "store")
    again = _cli("index", str(photos), "-s", store, "-q")
    assert again.exit_code == 0 and "embedded 0" in again.output
    assert "images/s" not in again.output  # no "(0.0 images/s)" after a no-op

    text = _cli("search", "text", "an animal at night", "-s", store, "-k", "5")
    assert text.exit_code == 0, text.output
    lines = text.output.splitlines()
    assert len(lines) == 6 and all(len(line) <= 80 for line in lines), text.output
    assert "photos/" in text.output and str(photos) not in text.output  # relative paths

    filtered = _cli("search", "text", "an animal", "-s", store, "--where", "country_code=KE")
    assert filtered.exit_code == 0 and "(no results)" in filtered.stdout
    assert "no image of" in filtered.stderr and "country_code=KE" in filtered.stderr

    for mode in ("hybrid", "semantic"):
        taxon = _cli("search", "taxon", NAME, "-s", store, "-k", "3", "--mode", mode,
                     "--format", "json")  # fmt: skip
        assert taxon.exit_code == 0, taxon.output
        rows = json.loads(taxon.output)
        assert len(rows) == 3 and {r["match"] for r in rows} == {"look-alike"}
    catalog = _cli("search", "taxon", NAME, "-s", store, "--mode", "catalog")
    assert catalog.exit_code == 1
    assert "names no taxa" in catalog.output and "--mode semantic" in catalog.output

    bad = str(photos / "notes.jpg")
    good = str(next(p for p in sorted(photos.glob("*.jpg")) if p.name != "notes.jpg"))
    unnamed = _cli("classify", good, bad, "-s", store)
    assert unnamed.exit_code == 1 and len(unnamed.output.strip().splitlines()) == 1
    assert "names no taxa" in unnamed.output and "--labels" in unnamed.output
    assert "--taxonomy" not in unnamed.output  # classify has no such option
    named = _cli("classify", good, bad, "-s", store, "--labels", "elephant,cat,car,empty")
    assert named.exit_code == 0, named.output
    assert f"warning: cannot read {bad}" in named.output
    answered = named.output.split(f"{good}: ", 1)[1].splitlines()  # its answer, then labels
    assert answered[1].split() == ["label", "score"]
    assert sorted(line.split()[0] for line in answered[2:]) == ["car", "cat", "elephant", "empty"]

    # A folder is the images under it; one given as a search image is named as a folder.
    folder = _cli("classify", str(photos), "-s", store, "--labels", "cat,car", "--format", "json")
    assert folder.exit_code == 0, folder.output
    answered = {row["file"] for row in json.loads(folder.output)}
    assert answered == {str(p) for p in photos.rglob("*.*") if p.is_file()}, answered
    searched = _cli("search", "image", str(photos), "-s", store)
    assert searched.exit_code == 1 and "is a folder" in searched.output, searched.output
    # Without `image`, a folder's path was searched as text: look-alikes of its name.
    boxed = _cli("search", str(photos), "-s", store)
    assert boxed.exit_code == 1 and "is a folder" in boxed.output, boxed.output
    # A picture given to --add is a term of a text query: it made the query an image path.
    added = _cli("search", "an animal", "--add", good, "-s", store, "--format", "json")
    assert added.exit_code == 0, added.output
    assert f"photos/{Path(good).name}" in [r["path"] for r in json.loads(added.output)[:3]]

    dedup = _cli("dedup", "-s", store, "--format", "json")
    members = json.loads(dedup.output)
    anchors = [m for m in members if m["kind"] == "anchor"]
    assert anchors and all(m["score"] is None for m in anchors)
    assert [m["score"] for m in members if m["kind"] == "exact"] == [1.0]

    # A misspelt --columns printed blank lines: a CSV with no header and empty rows.
    picked = _cli("search", "text", "an animal", "-s", store, "-k", "2", "--format", "csv",
                  "--columns", "path,scientfic_name")  # fmt: skip
    assert picked.exit_code == 0, picked.output
    header, *cells = picked.stdout.splitlines()
    assert header == "path,scientfic_name" and len(cells) == 2 and cells[0].startswith("photos/")
    assert "no result has a value in 'scientfic_name'" in picked.stderr
    assert "path" in picked.stderr.split("these do:")[1]

    info = _cli("info", "-s", store)
    assert info.exit_code == 0 and "None" not in info.output
    assert all(len(line) <= 80 for line in info.output.splitlines()), info.output
    data = json.loads(_cli("info", "-s", store, "--format", "json").output)
    assert data["last_run"]["sources"] == [str(photos)]
    failures = json.loads(_cli("info", "-s", store, "--failures", "--format", "json").output)
    assert failures and not any("object at 0x" in f["error"] for f in failures)


def test_python_api_first_hour(plain) -> None:
    root, photos = plain
    with Collection.open(root / "store", read_only=True) as col:
        assert col.search("herbarium sheet", k=3).kind == "text"
        answer = col.search(NAME, k=3)
        assert answer.kind == "name" and {h.why for h in answer.hits} == {"look-alike"}
        assert len(col.search_taxon("Felidae", k=4)) == 4
        with pytest.raises(NoTaxaError) as caught:
            col.classify([next(photos.glob("*.jpg"))])
        message = str(caught.value)
        assert "labels=" in message and "--" not in message  # Python's remedy, not a flag
        # One path is one image (its characters were read as paths: "/" walked the disk).
        one = str(next(p for p in sorted(photos.glob("*.jpg")) if p.name != "notes.jpg"))
        answered = col.classify(one, labels=["cat", "car"])
        assert {p.file for p in answered} == {one}, {p.file for p in answered}
        with pytest.raises(BioindexError, match=r"a list of names, such as \['cat', 'car'\]"):
            col.classify([one], labels="cat, car")
        assert col.duplicates(0.95)[0].kind == "anchor"
        assert col.info()["images_live"] >= 10


@pytest.fixture(scope="module")
def server(plain):
    from bioindex.serve.app import create_app

    root, _ = plain
    app = create_app(root / "store", device="cpu")
    with LiveServer(app) as live:
        yield live.url, root
    app.state.collection.close()


def test_http_api_first_hour(server, plain) -> None:
    url, _ = server
    root, photos = plain
    photo = next(p for p in sorted(photos.glob("*.jpg")) if p.name != "notes.jpg").read_bytes()
    with httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/api/info").json()["names_taxa"] is False
        text = client.get("/api/search", params={"q": "an animal at night", "k": 3}).json()
        assert text["query_as"] == "text" and len(text["results"]) == 3
        name = client.get("/api/search", params={"q": NAME, "k": 3}).json()
        assert name["query_as"] == "name"
        assert {r["match"] for r in name["results"]} == {"look-alike"}
        assert all(not r["path"].startswith("/") for r in name["results"])
        found = client.post("/api/search/image", params={"k": 3},
                            files={"file": ("q.jpg", photo, "image/jpeg")})  # fmt: skip
        assert found.status_code == 200 and len(found.json()["results"]) == 3
        refused = client.post("/api/classify", files={"file": ("q.jpg", photo, "image/jpeg")})
        assert refused.status_code == 400
        assert "labels=" in refused.json()["error"] and "--" not in refused.json()["error"]
        named = client.post("/api/classify", params={"labels": "elephant,cat,car"},
                            files={"file": ("q.jpg", photo, "image/jpeg")})  # fmt: skip
        assert named.status_code == 200 and len(named.json()["predictions"]) == 3
        one = client.post("/api/classify", params={"labels": "elephant,cat,car",
                                                   "templates": "one"},
                          files={"file": ("q.jpg", photo, "image/jpeg")})  # fmt: skip
        assert one.status_code == 200 and len(one.json()["predictions"]) == 3
        unlabelled = client.post("/api/classify", params={"templates": "one"},
                                 files={"file": ("q.jpg", photo, "image/jpeg")})  # fmt: skip
        assert unlabelled.status_code == 400 and "for custom labels" in unlabelled.json()["error"]
        # Near-duplicates: the groups `bioindex dedup` gives, largest first, a page at a time.
        with Collection.open(root / "store", read_only=True) as col:
            expected = {}
            for member in col.duplicates(0.95):
                expected.setdefault(member.group, []).append((member.image_id, member.kind))
        groups = client.get("/api/duplicates", params={"limit": 200}).json()
        assert groups["groups"] == len(expected) >= 1
        assert [[(m["image_id"], m["kind"]) for m in g["members"]] for g in groups["results"]] \
            == sorted(expected.values(), key=lambda g: (-len(g), g[0][0]))
        assert any(m["kind"] == "exact" for g in groups["results"] for m in g["members"])
        assert all(not m["path"].startswith("/") and "uri" not in m
                   for g in groups["results"] for m in g["members"])  # fmt: skip
        second = client.get("/api/duplicates", params={"offset": 1, "limit": 1}).json()
        assert second["results"] == groups["results"][1:2]
        wrong = client.get("/api/duplicates", params={"threshold": 1.5})
        assert wrong.status_code == 400 and "--" not in wrong.json()["error"]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
@pytest.mark.parametrize("width, height, label", [
    (1280, 900, "desktop"), pytest.param(390, 844, "phone", marks=pytest.mark.slow)])
def test_page_first_hour(server, plain, width: int, height: int, label: str,
                         tmp_path: Path) -> None:  # fmt: skip
    playwright = pytest.importorskip("playwright.sync_api")
    url, _ = server
    _, photos = plain
    shots = screenshot_folder()
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": width, "height": height},
                            bypass_csp=True)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url)
        page.wait_for_function("document.querySelector('#summary').textContent.includes('no "
                               "taxon names')")  # fmt: skip
        # Filters over what a plain folder does not hold are left out; its own stay.
        for absent in ("#rankvalue", "#institution", "#country", "#group"):
            assert not page.is_visible(absent), absent
        for present in ("#folder", "#from", "#to"):
            assert page.is_visible(present), present

        page.fill("#q", "an animal at night")
        page.press("#q", "Enter")
        page.wait_for_selector(".card")
        assert "matching the text" in page.inner_text("section.list h2")
        assert page.inner_text("#status") == ""  # the heading says it; not twice
        assert page.get_attribute("#status", "class") != "error"
        page.wait_for_function("[...document.images].slice(0, 2).every(i => i.complete && "
                               "i.naturalWidth)")  # fmt: skip
        page.screenshot(path=str(shots / f"plain-{label}-text.png"), full_page=True)
        if (SHARED_FIXTURES / "camera-trap").is_dir():  # the traps' EXIF dates: filters work
            page.fill("#from", "2016-01-01")
            page.fill("#to", "2016-12-31")
            page.press("#q", "Enter")
            page.wait_for_function("[...document.querySelectorAll('.card')].length == 3")
            assert sorted(page.eval_on_selector_all(".card .path", "s => s.map(e => "
                          "e.textContent.split('/').pop())")) == ["blank.jpg", "blank2.jpg",
                                                                  "blank3.jpg"]  # fmt: skip
            page.fill("#from", "")
            page.fill("#to", "")
        page.fill("#folder", "nowhere")  # a folder filter: the plain folder's one structure
        page.press("#q", "Enter")
        page.wait_for_selector("#status:has-text('No images found')")
        page.fill("#folder", photos.name)
        page.press("#q", "Enter")
        page.wait_for_selector(".card")
        assert "folder=" + photos.name in page.url
        page.fill("#folder", "")

        page.fill("#q", NAME)
        page.press("#q", "Enter")
        page.wait_for_selector("section.list h2:has-text('look-alikes of')")
        kinds = page.eval_on_selector_all("section.list", "s => s.map(e => e.dataset.kind)")
        assert kinds == ["look-alike"]

        page.set_input_files("#photo", str(next(photos.glob("*elephants.jpg"), None)
                                            or sorted(photos.rglob("*.jpg"))[0]))  # fmt: skip
        page.wait_for_selector("#no-names")
        assert not page.is_visible("#near") and not page.is_visible("#method")  # no names
        assert page.is_visible("#checklist")  # a species list still names a photo
        assert "species list" in page.inner_text("#no-names")
        page.wait_for_selector("section.list h2:has-text('look like')")
        assert page.get_attribute("#status", "class") != "error"
        assert len(page.query_selector_all(".card")) >= 5
        page.screenshot(path=str(shots / f"plain-{label}-upload.png"), full_page=True)
        # With a checklist chosen, the same photo is named against its species (before:
        # the list could not be given where the catalog names none).
        checklist = tmp_path / "checklist.csv"
        checklist.write_text("species,family\nLoxodonta africana,Elephantidae\n"
                             "Leopardus pardalis,Felidae\n")  # fmt: skip
        page.set_input_files("#checklist", str(checklist))
        page.set_input_files("#photo", [])
        page.set_input_files("#photo", str(next(photos.glob("*elephants.jpg"), None)
                                            or sorted(photos.rglob("*.jpg"))[0]))  # fmt: skip
        page.wait_for_selector("#predicted")
        assert page.inner_text("#predicted") in ("Loxodonta africana", "Leopardus pardalis",
                                                 "Elephantidae", "Felidae", "Loxodonta",
                                                 "Leopardus", "unknown")  # fmt: skip
        page.set_input_files("#checklist", [])

        page.click("#duplicates")
        page.wait_for_selector("section[data-kind=duplicates]")
        assert "groups of near-duplicates" in page.inner_text("#status")
        first = page.inner_text("section[data-kind=duplicates]")
        assert "the group's first image" in first and "the same bytes" in page.inner_text(
            "#results")  # the exact copy
        assert "duplicates=0.95" in page.url
        page.screenshot(path=str(shots / f"plain-{label}-duplicates.png"), full_page=True)
        if label == "phone":
            assert page.evaluate("document.documentElement.scrollWidth") <= width
        assert not errors
        browser.close()
    assert (shots / f"plain-{label}-upload.png").stat().st_size > 10_000


def test_errors_name_the_remedy_for_each_interface() -> None:
    from bioindex.collection import NAME_TAXA

    error = BioindexError("the catalog of s names no taxa", remedy=NAME_TAXA)
    assert "--taxonomy" in error.explain("cli", {"--taxonomy", "--mode"})
    assert "--labels" in error.explain("cli", {"--labels", "--tol"})
    assert "--taxonomy" not in error.explain("cli", {"--labels"})
    assert "--" not in error.explain("python") and "--" not in error.explain("http")
    assert os.linesep not in error.explain("cli", set())


def test_a_lone_string_is_one_item_not_its_characters(tmp_path: Path, tiny_model: str) -> None:
    """index("photos") read 'p', 'h', … as sources; query_vector("cat") embedded 'c', 'a'
    and 't' as three texts and searched for their sum, answering without a word wrong."""
    folder = tmp_path / "photos"
    draw_images(folder, 6, seed=2)
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as col:
        assert col.index(str(folder), progress=False).embedded == 6
        assert col.embed_texts("a beetle").shape == (1, col.store.dim)
        assert np.array_equal(col.query_vector("a beetle"), col.query_vector(["a beetle"]))
        assert np.array_equal(col.query_vector("a", "b"), col.query_vector(["a"], ["b"]))
        assert ([h.image_id for h in col.search_query("a beetle", k=3)]
                == [h.image_id for h in col.search_query(["a beetle"], k=3)])  # fmt: skip
        assert col.tuning_pictures(folder).shape == (6, col.store.dim)
