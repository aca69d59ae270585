"""The web page in a real headless Chromium (Debian's, driven by Playwright) against uvicorn."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from bioindex import Collection
from bioindex.demo.draw import draw_organism
from bioindex.demo.run import write_collection
from bioindex.demo.tree import SPECIES
from tests.conftest import LiveServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
# Pages are opened with bypass_csp: Playwright's wait_for_function evaluates strings, which
# the server's Content-Security-Policy forbids (test_page_runs_under_its_own_csp checks the
# page itself needs no such exception).
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    playwright = pytest.importorskip("playwright.sync_api")
    from bioindex.serve.app import create_app

    root = write_collection(tmp_path_factory.mktemp("web"), per_species=3, seed=78)
    _link_records(root / "occurrences.csv")
    with Collection.open(root / "store", model="bioclip-demo", create=True, device="cpu") as col:
        col.index([root / "images"], metadata=root / "occurrences.csv", progress=False)
    app = create_app(root / "store", device="cpu")
    with LiveServer(app) as live, playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser, live.url, root
        browser.close()
    app.state.collection.close()


RECORDS = "https://collections.example.org/specimen/"


def _link_records(table: Path) -> None:
    """Give every record a web page (dcterms:references), as a museum's catalog has."""
    import csv

    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    with open(table, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*rows[0], "references"])
        writer.writeheader()
        # One institution's licence as the URL GBIF and Camtrap DP write (a card shows it
        # short); the others as SPDX ids.
        writer.writerows({**row, "references": RECORDS + row["catalogNumber"],
                          "license": CC_BY if row["license"] == "CC-BY-4.0" else row["license"]}
                         for row in rows)  # fmt: skip


CC_BY = "http://creativecommons.org/licenses/by/4.0/"


def screenshot_folder() -> Path:
    """Where the page's screenshots go: $BIOINDEX_SCREENSHOTS, else test-output/screenshots
    in the checkout (ignored by git), so a run leaves them to look at."""
    folder = Path(os.environ.get("BIOINDEX_SCREENSHOTS") or
                  Path(__file__).resolve().parent.parent / "test-output" / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _cards(page) -> list[dict]:
    return page.eval_on_selector_all(
        ".card", "els => els.map(e => ({name: e.querySelector('.name').textContent,"
        " catalog: e.dataset.catalog, text: e.innerText}))")  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("width, height, label", [
    (1280, 900, "desktop"), pytest.param(390, 844, "phone", marks=pytest.mark.slow)])
def test_taxon_search_upload_filter_and_reload(site, tmp_path: Path, width, height, label):
    browser, url, _ = site
    shots = screenshot_folder()
    page = browser.new_page(viewport={"width": width, "height": height},
                            bypass_csp=True)
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)

    family = SPECIES[30].taxon.family  # a family of six species, three pictures each
    genera = {s.taxon.genus for s in SPECIES if s.taxon.family == family}
    page.fill("#q", family[:4])
    page.wait_for_function("document.querySelectorAll('#taxa option').length > 0")
    assert family in page.eval_on_selector_all("#taxa option", "os => os.map(o => o.value)")
    page.fill("#q", family)
    page.press("#q", "Enter")
    page.wait_for_selector(".card")
    cards = _cards(page)
    assert len(cards) >= 18
    assert all(c["name"].split()[0] in genera for c in cards[:18]), cards[:18]
    page.wait_for_function(
        "[...document.images].slice(0, 2).every(i => i.complete && i.naturalWidth)"
    )
    page.screenshot(path=str(shots / f"{label}-taxon.png"), full_page=True)

    # A filter narrows the same query, and the URL keeps it.
    page.fill("#institution", "SYNTH")
    page.press("#q", "Enter")
    page.wait_for_function("new URLSearchParams(location.search).get('institution') === 'SYNTH'")
    page.wait_for_function("[...document.querySelectorAll('.card')].every("
                           "c => c.innerText.includes('SYNTH'))")  # fmt: skip
    filtered = [c["catalog"] for c in _cards(page)]
    assert filtered and all(c.startswith("SYNTH-") for c in filtered)
    page.reload()
    page.wait_for_selector(".card")
    page.wait_for_function(f"document.querySelectorAll('.card').length === {len(filtered)}")
    assert [c["catalog"] for c in _cards(page)] == filtered
    assert page.input_value("#institution") == "SYNTH" and page.input_value("#q") == family

    # A rank filter: a free-text query restricted to one genus.
    genus = SPECIES[31].taxon.genus
    page.fill("#institution", "")
    page.fill("#q", "a photo of an organism")
    page.select_option("#rank", "genus")
    page.fill("#rankvalue", genus)
    page.press("#q", "Enter")
    page.wait_for_selector("section.list h2:has-text('text')")
    page.wait_for_function(f"[...document.querySelectorAll('.card .name')].every("
                           f"n => n.textContent.startsWith('{genus} '))")  # fmt: skip
    assert len(_cards(page)) == 9  # three species of the genus, three pictures each
    page.select_option("#rank", "")

    # Upload a new photo: its predicted taxon and its look-alikes.
    target = SPECIES[12]
    photo = tmp_path / "field-photo.jpg"
    draw_organism(target, np.random.default_rng(11)).save(photo)
    page.fill("#institution", "")
    page.set_input_files("#photo", str(photo))
    page.wait_for_selector("#predicted")
    assert page.inner_text("#predicted") == target.name
    assert target.taxon.family in page.inner_text("#prediction")
    page.wait_for_selector("section.list h2:has-text('look like')")
    neighbours = _cards(page)
    assert sum(c["name"] == target.name for c in neighbours[:3]) >= 2
    page.screenshot(path=str(shots / f"{label}-upload.png"), full_page=True)
    if label == "phone":  # the grid reflows to two columns; nothing overflows sideways
        assert page.evaluate("document.documentElement.scrollWidth") <= width
    assert not errors
    page.close()


def test_several_photos_of_one_specimen_get_one_answer_with_its_band(site, tmp_path) -> None:
    import csv

    from bioindex.demo.draw import draw_views

    browser, url, root = site
    target = SPECIES[30]
    rows = list(csv.DictReader(open(root / "occurrences.csv")))
    spot = next(r for r in rows if r["scientificName"] == target.name)
    paths = []
    for i, view in enumerate(draw_views(target, np.random.default_rng(3), 3)):
        paths.append(tmp_path / f"view{i}.jpg")
        view.save(paths[-1])
    page = browser.new_page(bypass_csp=True)
    answered = []
    page.on("response", lambda r: answered.append(r) if "/api/classify" in r.url else None)
    page.goto(url)
    page.fill("#near", f"{spot['decimalLatitude']},{spot['decimalLongitude']}")
    page.select_option("#method", "few-shot")
    page.set_input_files("#photo", [str(p) for p in paths])
    page.wait_for_selector("#predicted")
    panel = page.inner_text("#prediction")
    assert "from 3 photos" in panel and page.inner_text("#predicted") == target.name
    assert page.inner_text("#band") in ("confident", "uncertain: not sure enough of anything "
                                        "below this rank")  # fmt: skip
    assert len(answered) == 1 and "method=few-shot" in answered[0].url
    assert "near=" in answered[0].url and answered[0].json()["views"] == 3
    # A checklist instead of a point: the answer can only be a listed species.
    listed = SPECIES[31] if SPECIES[31].taxon.genus == target.taxon.genus else SPECIES[29]
    checklist = tmp_path / "checklist.csv"
    checklist.write_text(f"species\n{listed.name}\n")
    page.fill("#near", "")
    page.set_input_files("#checklist", str(checklist))
    page.evaluate("document.querySelector('#predicted').remove()")
    page.set_input_files("#photo", [str(p) for p in paths[:2]])  # a change, so it is sent
    page.wait_for_selector("#predicted")
    assert "species_list" not in answered[-1].url and answered[-1].status == 200
    import httpx

    def score_of_listed(body: dict) -> float:  # its genus: the page asks for the top 3
        genus = body["ranks"]["genus"]
        return genus["score"] if genus["name"] == listed.taxon.genus else 0.0

    views = [("file", (p.name, p.read_bytes(), "image/jpeg")) for p in paths[:2]]
    plain = httpx.post(url + "/api/classify", files=views, params={"method": "few-shot",
                                                                    "k": 3}).json()  # fmt: skip
    # Every other species keeps a tenth of its probability: the listed one's genus gains.
    assert score_of_listed(answered[-1].json()) > score_of_listed(plain) > 0
    page.close()


def test_unknown_name_falls_back_to_text_search(site) -> None:
    browser, url, _ = site
    page = browser.new_page(bypass_csp=True)
    page.goto(url + "?q=" + "a photo of a striped red drop")
    page.wait_for_selector(".card")
    assert "matching the text" in page.inner_text("section.list h2")
    page.close()


def test_page_runs_under_its_own_csp(site) -> None:
    """No bypass here: the page, its script file and its thumbnails work under the CSP the
    server sends, and the browser reports no violation."""
    browser, url, _ = site
    page = browser.new_page()
    problems: list[str] = []
    # Any error in the console, not only the CSP's: a missing favicon was one on every load.
    page.on("console", lambda message: problems.append(message.text)
            if message.type == "error" or "Content Security Policy" in message.text
            else None)  # fmt: skip
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    response = page.goto(url)
    assert "script-src 'self'" in response.headers["content-security-policy"]
    page.fill("#q", SPECIES[30].taxon.family)
    page.press("#q", "Enter")
    page.wait_for_selector(".card img")
    page.wait_for_selector("section.list h2:has-text('records of')")
    page.wait_for_load_state("networkidle")
    assert not problems, problems
    page.close()


def test_cards_link_to_the_record_and_show_institution_and_rights(site) -> None:
    browser, url, _ = site
    page = browser.new_page(bypass_csp=True)
    page.goto(url + "?q=" + SPECIES[30].taxon.family)
    page.wait_for_selector(".card a.record")
    cards = page.eval_on_selector_all(".card", "els => els.map(e => ({catalog: "
                                      "e.dataset.catalog, link: e.querySelector('a.record')"
                                      ".href, rights: e.querySelector('.rights').innerText, "
                                      "text: e.innerText}))")  # fmt: skip
    assert cards and all(c["link"] == RECORDS + c["catalog"] for c in cards)
    assert all(c["rights"].startswith("licence ") and "©" in c["rights"] for c in cards)
    # A licence URL is shown by its short name (it ran off the card), the URL on hover.
    shown = {c["rights"].split(" · ")[0] for c in cards}
    assert shown <= {"licence CC BY 4.0", "licence CC0-1.0", "licence CC-BY-NC-4.0"}, shown
    assert page.eval_on_selector_all(".rights span[title]", "els => els.map(e => e.title)")
    assert all(t in (CC_BY, "CC0-1.0", "CC-BY-NC-4.0") for t in page.eval_on_selector_all(
        ".rights span[title]", "els => els.map(e => e.title)"))  # fmt: skip
    assert all(c["catalog"].split("-")[0] in c["text"] for c in cards)  # the institution code
    page.close()


def test_a_common_name_finds_its_records_on_the_page(site, tmp_path: Path, tiny_model: str
                                                     ) -> None:  # fmt: skip
    """A camera trap's store names its photos by common names only: the box's "elephant"
    gave look-alikes under "images matching the text" though the catalog said which photos
    were elephants; the name is offered as the curator types."""
    import json

    from bioindex.serve.app import create_app
    from tests.conftest import shared
    from tests.test_speciesnet import _coco

    trap = tmp_path / "trap"
    shutil.copytree(shared("camera-trap"), trap, ignore=shutil.ignore_patterns("*.md", "*.json"))
    document = _coco(trap)
    document["annotations"].append({"id": "7", "image_id": "e", "category_id": 3})  # a dog
    (tmp_path / "lila.json").write_text(json.dumps(document))
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as collection:
        collection.index([trap], metadata=tmp_path / "lila.json", progress=False)
    app = create_app(tmp_path / "s", device="cpu")
    browser = site[0]  # the module's browser: one Playwright per thread
    with LiveServer(app) as live:
        page = browser.new_page(viewport={"width": 1280, "height": 900}, bypass_csp=True)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(live.url)
        page.fill("#q", "eleph")
        page.wait_for_function("[...document.querySelectorAll('#taxa option')]"
                               ".some(o => o.value === 'elephant')")  # fmt: skip
        page.fill("#q", "elephant")
        page.press("#q", "Enter")
        page.wait_for_selector("section[data-kind=catalog] .card")
        heading = page.inner_text("section[data-kind=catalog] h2")
        summary = page.inner_text("#summary")
        records = page.eval_on_selector_all("section[data-kind=catalog] .card",
                                            "cs => cs.map(c => c.innerText)")  # fmt: skip
        page.screenshot(path=str(screenshot_folder() / "common-name.png"), full_page=True)
        # A photo dropped on the page is named between the catalog's common names.
        page.set_input_files("#photo", str(trap / "ocelot.jpg"))
        page.wait_for_selector("#predicted")
        predicted, panel = page.inner_text("#predicted"), page.inner_text("#prediction")
        # The store's own labelled photos teach their common names (few-shot).
        method_shown = page.is_visible("#method")
        page.select_option("#method", "few-shot")
        page.evaluate("document.getElementById('prediction').innerHTML = ''")
        with page.expect_response(lambda r: "/api/classify" in r.url) as asked:
            page.set_input_files("#photo", str(trap / "american_black_bear.jpg"))
        page.wait_for_selector("#predicted")
        learnt = page.inner_text("#predicted")
        slant = page.eval_on_selector("#predicted", "e => getComputedStyle(e).fontStyle")
        page.close()
    app.state.collection.close()
    assert method_shown and "method=few-shot" in asked.value.url, asked.value.url
    # The COCO file's empty frame is learnt too: "blank" is an answer.
    assert asked.value.status == 200 and learnt in ("elephant", "dog", "blank", "unknown")
    assert slant == "normal"  # a common name is not set as a Latin name
    assert heading.startswith("2 records of elephant"), heading
    assert "common names only" in summary, summary
    assert predicted in ("elephant", "dog", "unknown"), panel
    assert "one of the 2 common names the catalog's records carry" in panel, panel
    assert len(records) == 2 and all("african_elephants" in r for r in records), records
    assert all(r.startswith("elephant\n") for r in records), records  # the name heads a card
    assert not errors


def test_photos_gone_since_indexing_show_as_missing(site, tmp_path: Path, tiny_model: str
                                                    ) -> None:  # fmt: skip
    """A plain folder whose photos were partly deleted after indexing: their cards were
    broken images, and the page never said why."""
    from bioindex.serve.app import create_app
    from tests.conftest import draw_images

    paths = draw_images(tmp_path / "photos", 6, seed=21)
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as collection:
        collection.index([tmp_path / "photos"], progress=False)
    for path in paths[:2]:
        path.unlink()
    app = create_app(tmp_path / "s", device="cpu")
    browser = site[0]
    with LiveServer(app) as live:
        page = browser.new_page(viewport={"width": 1280, "height": 900}, bypass_csp=True)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(live.url)
        page.wait_for_function("document.getElementById('summary').textContent.includes('model')")
        summary = page.inner_text("#summary")
        page.fill("#q", "a photo")
        page.press("#q", "Enter")
        page.wait_for_selector(".card")
        cards = page.eval_on_selector_all(".card", "cs => cs.map(c => ({gone: !!c.querySelector"
                                          "('.gone'), img: !!c.querySelector('img'), text: "
                                          "c.innerText}))")  # fmt: skip
        page.screenshot(path=str(screenshot_folder() / "missing-files.png"), full_page=True)
        page.close()
    app.state.collection.close()
    assert "2 of 6 photos checked are missing" in summary, summary
    assert len(cards) == 6
    gone = [c for c in cards if c["gone"]]
    assert len(gone) == 2 and not any(c["img"] for c in gone), cards
    assert ({c["text"].split("\n")[1] for c in gone}
            == {str(p.relative_to(tmp_path)) for p in paths[:2]})  # fmt: skip
    assert all(c["img"] for c in cards if not c["gone"])
    assert not errors


def test_an_answer_held_above_its_rank_by_novelty_says_why(site) -> None:
    """A photo unlike every labelled species (a real camera-trap photo of a person on the
    demo world's store): the band said "not sure enough of anything below this rank" above
    a table whose species row read 87%; the note says why, and the band no longer
    contradicts it."""
    from tests.conftest import shared

    browser, url, _ = site
    page = browser.new_page(bypass_csp=True)
    page.goto(url)
    page.select_option("#method", "few-shot")
    page.set_input_files("#photo", str(shared("camera-trap", "human.jpg")))
    page.wait_for_selector("#predicted")
    band, note = page.inner_text("#band"), page.inner_text("#note")
    page.close()
    assert note.startswith("unlike every labelled"), note
    assert band == "uncertain", band


def test_the_photo_picker_offers_every_format_the_server_reads() -> None:
    """The picker asked for image/*, which a browser maps through the system's types: an
    iPhone's .heic, a herbarium's .jp2 and a TIFF master were often not offered, though
    the server reads them (a drop on the page was the only way in)."""
    import re

    from bioindex.images import IMAGE_EXTENSIONS
    from bioindex.serve.app import STATIC

    page = (STATIC / "index.html").read_text()
    accept = re.search(r'<input id="photo"[^>]*accept="([^"]*)"', page).group(1).split(",")
    everywhere = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp"}  # image/* in any browser
    assert "image/*" in accept
    assert IMAGE_EXTENSIONS - everywhere <= set(accept), IMAGE_EXTENSIONS - set(accept)
