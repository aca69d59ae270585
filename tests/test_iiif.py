"""IIIF in: manifests (v2, v3), collections and CETAF-style archive rows, fetched through
a static level-0 Image API server on 127.0.0.1 built from real photos."""

from __future__ import annotations

import functools
import json
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from bioindex.cli import main
from bioindex.indexer.iiif import canvases, manifest_metadata, size_for
from bioindex.store import Store
from tests.conftest import shared

PHOTOS = ("african_elephants.jpg", "american_black_bear.jpg", "domestic_cattle.jpg",
          "domestic_dog.jpg", "vehicle.jpg", "human.jpg")  # fmt: skip
SIZES = (0.125, 0.25, 0.5)  # of the master, as a level-0 service lists them


class _Counting(SimpleHTTPRequestHandler):
    sent = 0  # body bytes served since the last reset

    def copyfile(self, source, outputfile) -> None:  # noqa: ANN001 - http.server's API
        data = source.read()
        type(self).sent += len(data)
        outputfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


class IIIFServer:
    """Static files: per image a info.json and its listed sizes; the masters beside.
    `master_bytes` is the bytes of one copy of each master (v2 and v3 serve the same)."""

    def __init__(self, root: Path):
        self.root = root
        handler = type("Handler", (_Counting,), {"sent": 0})
        self.handler = handler
        self.server = ThreadingHTTPServer(("127.0.0.1", 0),
                                          functools.partial(handler, directory=str(root)))
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.master_bytes = 0

    def add_image(self, name: str, photo: Path) -> dict[int, str]:
        """Publish `photo` under a v2 and a v3 service, each with the listed sizes; returns
        the service ids by version."""
        picture = Image.open(photo).convert("RGB")
        # Twice the photo's size: a sheet's master is many times what the model needs.
        master = picture.resize((picture.width * 2, picture.height * 2), Image.BILINEAR)
        sizes = [(round(master.width * f), round(master.height * f)) for f in SIZES]
        derived = {size: picture.resize(size, Image.BILINEAR) for size in sizes}
        master_file = self.root / f"{name}-master.jpg"
        master.save(master_file, quality=90)
        self.master_bytes += master_file.stat().st_size
        services = {}
        for version in (2, 3):
            service = services[version] = f"{self.base}/iiif{version}/{name}"
            folder = self.root / f"iiif{version}" / name
            full = folder / "full" / ("max" if version == 3 else "full") / "0" / "default.jpg"
            full.parent.mkdir(parents=True)
            shutil.copyfile(master_file, full)
            for (w, h), picture in derived.items():
                segment = f"{w},{h}" if version == 3 else f"{w},"
                target = folder / "full" / segment / "0" / "default.jpg"
                target.parent.mkdir(parents=True)
                picture.save(target, quality=90)
            info = {"@context": f"http://iiif.io/api/image/{version}/context.json",
                    ("id" if version == 3 else "@id"): service,
                    "profile": ("level0" if version == 3
                                else ["http://iiif.io/api/image/2/level0.json"]),
                    "width": master.width, "height": master.height,
                    "sizes": [{"width": w, "height": h} for w, h in sizes]}  # fmt: skip
            (folder / "info.json").write_text(json.dumps(info))
        return services

    def publish(self, path: str, document: dict) -> str:
        (self.root / path).write_text(json.dumps(document))
        return f"{self.base}/{path}"

    def reset(self) -> None:
        self.handler.sent = 0

    @property
    def sent(self) -> int:
        return self.handler.sent

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def iiif(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("iiif")
    server = IIIFServer(root)
    published = [server.add_image(f"sheet{n}", shared("camera-trap", photo))
                 for n, photo in enumerate(PHOTOS[:5])]  # fmt: skip
    server.services = {v: [p[v] for p in published] for v in (2, 3)}
    yield server
    server.close()


def manifest_v3(base: str, services: list[str]) -> dict:
    canvases = []
    for n, service in enumerate(services):
        canvas = f"{base}/canvas/{n}"
        canvases.append({"id": canvas, "type": "Canvas", "label": {"en": [f"sheet {n}"]},
                         "width": 4096, "height": 3072, "items": [{
                             "id": f"{canvas}/page", "type": "AnnotationPage", "items": [{
                                 "id": f"{canvas}/anno", "type": "Annotation",
                                 "motivation": "painting", "target": canvas,
                                 "body": {"id": f"{service}/full/max/0/default.jpg",
                                          "type": "Image", "format": "image/jpeg",
                                          "service": [{"id": service, "type": "ImageService3",
                                                       "profile": "level0"}]}}]}]})  # fmt: skip
    return {"@context": "http://iiif.io/api/presentation/3/context.json",
            "id": f"{base}/manifest3.json", "type": "Manifest",
            "label": {"en": ["Herbarium sheets of one collecting trip"]},
            "metadata": [{"label": {"en": ["Catalog Number"]}, "value": {"none": ["BR0000013"]}},
                         {"label": {"en": ["Scientific name"]},
                          "value": {"none": ["<i>Loxodonta africana</i>"]}}],
            "rights": "http://creativecommons.org/publicdomain/zero/1.0/",
            "requiredStatement": {"label": {"en": ["Attribution"]},
                                  "value": {"en": ["Meise Botanic Garden"]}},
            "items": canvases}  # fmt: skip


def manifest_v2(base: str, name: str, service: str, catalog_number: str) -> dict:
    canvas = f"{base}/{name}/canvas/1"
    return {"@context": "http://iiif.io/api/presentation/2/context.json",
            "@id": f"{base}/{name}.json", "@type": "sc:Manifest", "label": name,
            "metadata": [{"label": "catalogNumber", "value": catalog_number}],
            "license": "https://creativecommons.org/licenses/by/4.0/",
            "attribution": "Naturalis", "sequences": [{"@type": "sc:Sequence", "canvases": [{
                "@id": canvas, "@type": "sc:Canvas", "label": "front", "width": 4096,
                "height": 3072, "images": [{"@type": "oa:Annotation", "on": canvas,
                    "resource": {"@id": f"{service}/full/full/0/default.jpg",
                                 "@type": "dctypes:Image",
                                 "service": {"@context": "http://iiif.io/api/image/2/context.json",
                                             "@id": service,
                                             "profile": "http://iiif.io/api/image/2/level0.json"}}}],
            }]}]}  # fmt: skip


def _index(source: str, store: Path, tiny_model: str) -> str:
    result = CliRunner().invoke(main, ["index", source, "-s", str(store), "-m", tiny_model,
                                       "-q", "--allow-private-urls"])  # fmt: skip
    assert result.exit_code == 0, result.output
    return result.output


def test_a_manifest_is_indexed_at_model_size_and_a_rerun_fetches_nothing(
        iiif: IIIFServer, tmp_path: Path, tiny_model: str) -> None:  # fmt: skip
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(manifest_v3(iiif.base, iiif.services[3])))
    iiif.reset()
    output = _index(str(manifest), tmp_path / "s", tiny_model)
    assert "embedded 5," in output, output
    # A level-0 service: the smallest listed size that covers the model's input, not the master.
    print(f"IIIF manifest: {iiif.sent} bytes fetched for masters of {iiif.master_bytes} "
          f"({iiif.sent / iiif.master_bytes:.1%})")
    assert 0 < iiif.sent <= 0.10 * iiif.master_bytes, (iiif.sent, iiif.master_bytes)
    with Store.open(tmp_path / "s", read_only=True) as opened:
        rows = opened.catalog.query("SELECT uri, catalog_number, scientific_name, license, "
                                    "rights_holder, width FROM images ORDER BY uri")[1]  # fmt: skip
    assert [r[0] for r in rows] == [f"{iiif.base}/canvas/{n}" for n in range(5)]
    assert {r[1:5] for r in rows} == {("BR0000013", "Loxodonta africana",
                                       "http://creativecommons.org/publicdomain/zero/1.0/",
                                       "Meise Botanic Garden")}  # fmt: skip
    assert all(r[5] < 1024 for r in rows)  # derivatives (the masters are 4096 or more wide)
    iiif.reset()
    output = _index(str(manifest), tmp_path / "s", tiny_model)
    assert "embedded 0, unchanged 5" in output and iiif.sent == 0
    assert _thumbnails_served(tmp_path / "s") == 5 and iiif.sent == 0  # from the media cache


def _thumbnails_served(store: Path) -> int:
    from fastapi.testclient import TestClient

    from bioindex.serve.app import create_app

    app = create_app(store, device="cpu", hosts=("testserver",))
    try:
        with TestClient(app) as client:
            ids = [r["image_id"] for r in client.get("/api/search/text?q=sheet&k=50")
                   .json()["results"]]  # fmt: skip
            answers = [client.get(f"/api/thumbnails/{i}?size=64") for i in ids]
        return sum(a.status_code == 200 and a.headers["content-type"] == "image/jpeg"
                   for a in answers)  # fmt: skip
    finally:
        app.state.collection.close()


CETAF_META = """<?xml version="1.0" encoding="UTF-8"?>
<archive xmlns="http://rs.tdwg.org/dwc/text/">
  <core encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy=""
        ignoreHeaderLines="1" rowType="http://rs.tdwg.org/dwc/terms/Occurrence">
    <files><location>occurrence.txt</location></files>
    <id index="0"/>
    <field index="0" term="http://rs.tdwg.org/dwc/terms/occurrenceID"/>
    <field index="1" term="http://rs.tdwg.org/dwc/terms/catalogNumber"/>
    <field index="2" term="http://rs.tdwg.org/dwc/terms/scientificName"/>
  </core>
  <extension encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy=""
        ignoreHeaderLines="1" rowType="http://rs.tdwg.org/ac/terms/Multimedia">
    <files><location>multimedia.txt</location></files>
    <coreid index="0"/>
    <field index="1" term="http://rs.tdwg.org/ac/terms/accessURI"/>
    <field index="2" term="http://purl.org/dc/elements/1.1/format"/>
    <field index="3" term="http://rs.tdwg.org/ac/terms/serviceExpectation"/>
  </extension>
</archive>
"""


def test_an_archive_naming_manifests_the_cetaf_way(iiif: IIIFServer, tmp_path: Path,
                                                   tiny_model: str) -> None:  # fmt: skip
    archive = tmp_path / "cetaf"
    archive.mkdir()
    core, media = ["id\tcatalogNumber\tscientificName"], ["coreid\taccessURI\tformat\texpect"]
    for n, service in enumerate(iiif.services[2]):
        url = iiif.publish(f"specimen{n}.json",
                           manifest_v2(iiif.base, f"specimen{n}", service, f"L.{n:07d}"))
        core.append(f"occ-{n}\tL.{n:07d}\tLoxodonta africana")
        media.append(f"occ-{n}\t{url}\tapplication/ld+json\tIIIF")
    (archive / "occurrence.txt").write_text("\n".join(core) + "\n")
    (archive / "multimedia.txt").write_text("\n".join(media) + "\n")
    (archive / "meta.xml").write_text(CETAF_META)
    iiif.reset()
    output = _index(str(archive), tmp_path / "s", tiny_model)
    assert "embedded 5," in output, output
    assert 0 < iiif.sent <= 0.10 * iiif.master_bytes
    with Store.open(tmp_path / "s", read_only=True) as opened:
        rows = opened.catalog.query("SELECT occurrence_id, catalog_number, license, "
                                    "rights_holder FROM images ORDER BY 1")[1]  # fmt: skip
    assert rows[0] == ("occ-0", "L.0000000", "https://creativecommons.org/licenses/by/4.0/",
                       "Naturalis")  # the archive's record, the manifest's rights
    iiif.reset()
    output = _index(str(archive), tmp_path / "s", tiny_model)
    assert "embedded 0, unchanged 5" in output and iiif.sent == 0


def test_a_collection_by_url_lists_its_manifests(iiif: IIIFServer, tmp_path: Path,
                                                 tiny_model: str) -> None:  # fmt: skip
    urls = [iiif.publish(f"c{n}.json", manifest_v2(iiif.base, f"c{n}", s, f"C{n}"))
            for n, s in enumerate(iiif.services[2][:2])]  # fmt: skip
    collection = iiif.publish("collection.json", {
        "@context": "http://iiif.io/api/presentation/3/context.json", "type": "Collection",
        "id": f"{iiif.base}/collection.json", "label": {"en": ["two"]},
        "items": [{"id": u, "type": "Manifest"} for u in urls]})  # fmt: skip
    output = _index(collection, tmp_path / "s", tiny_model)
    assert "embedded 2," in output, output
    refused = CliRunner().invoke(main, ["index", collection, "-s", str(tmp_path / "t"), "-m",
                                        tiny_model, "-q"])  # fmt: skip
    assert refused.exit_code == 1 and "private" in refused.output, refused.output


def test_size_choice_follows_the_service() -> None:
    v2 = {"@context": "http://iiif.io/api/image/2/context.json", "width": 8000, "height": 6000}
    level2 = {**v2, "profile": ["http://iiif.io/api/image/2/level2.json", {"maxWidth": 300}]}
    assert size_for({**v2, "profile": ["http://iiif.io/api/image/2/level1.json"]}, 224) == "448,"
    assert size_for(level2, 224) == "300,"
    assert size_for({**v2, "profile": ["http://iiif.io/api/image/2/level0.json"]}, 224) == "full"
    tall = {**v2, "width": 1000, "height": 8000, "profile": ["level1"]}
    assert size_for(tall, 224) == "224,"  # the short side still covers the input
    v3 = {"@context": "http://iiif.io/api/image/3/context.json", "width": 400, "height": 300,
          "profile": "level2"}
    assert size_for(v3, 224) == "max"  # smaller than wanted: never upscaled


def test_manifest_parsing_reads_v2_and_v3() -> None:
    base = "http://example.org"
    three = manifest_v3(base, [f"{base}/svc/{n}" for n in range(2)])
    assert [c.service for c in canvases(three)] == [f"{base}/svc/0", f"{base}/svc/1"]
    assert manifest_metadata(three)["Scientific name"] == "Loxodonta africana"
    two = manifest_v2(base, "m", f"{base}/svc/9", "X1")
    (canvas,) = canvases(two)
    assert (canvas.id, canvas.service, canvas.label) == (f"{base}/m/canvas/1", f"{base}/svc/9",
                                                         "front")  # fmt: skip
    assert manifest_metadata(two)["rightsHolder"] == "Naturalis"
