"""Collection sources: Darwin Core Archives, remote media, manifests, webdataset shards."""

from __future__ import annotations

import csv
import http.server
import io
import shutil
import tarfile
import threading
import time
import urllib.error
from pathlib import Path

import pytest
from click.testing import CliRunner

from bioindex import Collection
from bioindex.cli import main
from bioindex.errors import BioindexError
from bioindex.indexer import remote
from bioindex.indexer.dwca import Archive
from tests.conftest import assert_index_matches_catalog, draw_images, send_response, shared

CAMERA = ["ocelot.jpg", "american_black_bear.jpg", "domestic_dog.jpg", "domestic_cattle.jpg"]


@pytest.fixture()
def no_network_beyond_loopback(monkeypatch: pytest.MonkeyPatch):
    """Fake URLs in real archives must fail like an unreachable host, without a lookup."""
    real = remote._download

    def guarded(url: str, *args, **kwargs):
        host = url.split("/")[2].split(":")[0]
        if host not in ("127.0.0.1", "localhost"):
            raise urllib.error.URLError(f"no route to {host} (tests stay on loopback)")
        return real(url, *args, **kwargs)

    monkeypatch.setattr(remote, "_download", guarded)


def _catalog(store: Path, sql: str):
    from bioindex.store import Store

    with Store.open(store, read_only=True) as opened:
        return opened.catalog.query(sql)[1]


def test_gbif_download_records_arrive_intact(tmp_path: Path, tiny_model: str) -> None:
    archive = shared("dwca", "gbif-results.zip")
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as col:
        summary = col.index([archive], progress=False)
    assert summary.occurrences == 158 and summary.embedded == 0
    import zipfile

    with zipfile.ZipFile(archive) as z:
        text = z.read("occurrence.txt").decode("utf-8")
    rows = list(csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE))
    meta = Archive(archive)
    index_of = {term: i for i, term in meta.core.fields.items()}
    index_of = {v: k for k, v in meta.core.fields.items()}
    assert len(rows) == 158
    stored = {r[0]: r[1:] for r in _catalog(
        tmp_path / "s",
        "SELECT core_id, institution_code, catalog_number, scientific_name, country_code, "
        "decimal_latitude, kingdom, family FROM occurrences")}  # fmt: skip
    assert len(stored) == 158
    for row in rows[::17]:
        got = stored[row[0]]
        expected = [
            row[index_of[t]] or None
            for t in ("institutionCode", "catalogNumber", "scientificName", "countryCode")
        ]
        assert list(got[:4]) == expected
        latitude = row[index_of["decimalLatitude"]]
        assert got[4] == (float(latitude) if latitude else None)
        assert got[5] == (row[index_of["kingdom"]] or None)
    extra = _catalog(tmp_path / "s", "SELECT extra FROM occurrences WHERE extra IS NOT NULL")
    assert extra  # unmapped terms (datasetID, …) are kept, not dropped


def test_photos_are_identified_against_a_species_list_indexed_beside_them(
    tmp_path: Path, tiny_model: str
) -> None:
    # A plain folder of photos and a GBIF occurrence download without media: the download
    # is the collection's species list. Its specificEpithet column holds the whole binomial
    # ("Tetraodon fluviatilis"), which read as the species "Tetraodon Tetraodon fluviatilis",
    # and classify said the catalog named no taxa.
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("ocelot.jpg", "domestic_dog.jpg"):
        shutil.copy(shared("camera-trap", name), photos / name)
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as col:
        col.index([photos, shared("dwca", "gbif-results.zip")], progress=False)
        assert set(_catalog(tmp_path / "s", "SELECT DISTINCT genus, specific_epithet "
                                            "FROM occurrences")) == {("Tetraodon", "fluviatilis")}
        found = col.classify([photos / "ocelot.jpg"], k=1)
        assert [p.taxon.scientific_name for p in found] == ["Tetraodon fluviatilis"]
        assert found[0].taxon.family == "Tetraodontidae"
    with Collection.open(tmp_path / "plain", model=tiny_model, create=True) as col:
        col.index([photos], progress=False)  # photos alone still name no taxa
        with pytest.raises(BioindexError, match="names no taxa"):
            col.classify([photos / "ocelot.jpg"])
    with Collection.open(tmp_path / "list", model=tiny_model, create=True) as col:
        col.index([shared("dwca", "gbif-results.zip")], progress=False)
    # The archive alone embeds nothing; a search says so rather than "(no results)" alone.
    result = CliRunner().invoke(main, ["search", "text", "Puma concolor", "-s",
                                       str(tmp_path / "list")])  # fmt: skip
    assert result.exit_code == 0 and "holds no images yet" in result.output, result.output


# The fetches' deadline, and a reply twice as late. A 1 s deadline timed out a small page
# as well when CI's two cores were busy (the server's thread shares the test's GIL).
DEADLINE = 3.0
SLOW_SECONDS = 2 * DEADLINE


class _Handler(http.server.BaseHTTPRequestHandler):
    photos: Path
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.hits.append(self.path)
        name = self.path.rsplit("/", 1)[-1]
        if self.path.startswith("/photo/") and (self.photos / name).is_file():
            body = (self.photos / name).read_bytes()
            self._send(200, "image/jpeg", body)
        elif self.path == "/text":
            self._send(200, "text/html", b"<html>not an image</html>")
        elif self.path == "/huge":
            self._send(200, "image/jpeg", b"\xff" * (3 * 1024 * 1024))
        elif self.path == "/slow":
            time.sleep(SLOW_SECONDS)
            self._send(200, "image/jpeg", b"late")
        else:
            self._send(404, "text/plain", b"missing")

    def _send(self, code: int, kind: str, body: bytes) -> None:
        send_response(self, code, {"Content-Type": kind}, body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def media_server():
    _Handler.photos = shared("camera-trap")
    _Handler.hits = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Handler.hits
    server.shutdown()
    server.server_close()


def test_no_exif_removes_the_place_a_downloaded_photo_gave(tmp_path: Path, tiny_model: str,
                                                            media_server) -> None:  # fmt: skip
    # A manifest's photo with a phone's GPS in its EXIF: `--no-exif` on a later run removes
    # the place it gave, read from the store's media cache, with no second download. Before,
    # remote photos were passed over and their places stayed.
    from tests.test_images import _photo_with_a_place

    base, hits = media_server
    _Handler.photos = tmp_path / "served"
    _Handler.photos.mkdir()
    _photo_with_a_place(_Handler.photos / "orchid.jpg")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"url\n{base}/photo/orchid.jpg\n")
    place = "SELECT decimal_latitude, decimal_longitude FROM images"
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as col:
        assert col.index([manifest], progress=False, allow_private_urls=True).embedded == 1
        assert _catalog(tmp_path / "s", place) == [(-1.2916667, 36.82)]
        fetched = len(hits)
        summary = col.index([manifest], progress=False, allow_private_urls=True, exif=False)
    assert summary.updated == 1 and len(hits) == fetched
    assert _catalog(tmp_path / "s", place) == [(None, None)]


def test_a_lila_file_indexes_its_photos_from_the_bucket(tmp_path: Path, tiny_model: str,
                                                        media_server) -> None:  # fmt: skip
    """LILA's COCO files name photos by paths under the dataset's bucket folder; before,
    `--media-root` took only a folder, so its 100s of GB had to be downloaded first. A URL
    media root fetches each photo (checked, cached) from under it; a path climbing out is
    refused."""
    import json

    base, hits = media_server
    images = [{"id": i, "file_name": f"S{i}/{name}", "location": f"L{i}"}
              for i, name in enumerate(CAMERA)]  # fmt: skip
    images.append({"id": 9, "file_name": "../../photo/ocelot.jpg"})
    document = {"images": images, "categories": [{"id": 1, "name": "ocelot"}],
                "annotations": [{"id": 1, "image_id": 0, "category_id": 1}]}  # fmt: skip
    (tmp_path / "lila.json").write_text(json.dumps(document))
    result = CliRunner().invoke(main, ["index", str(tmp_path / "lila.json"), "-s",
                                       str(tmp_path / "s"), "-m", tiny_model, "-q",
                                       "--media-root", f"{base}/photo/data",
                                       "--allow-private-urls"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "embedded 4" in result.output and "failed 1" in result.output, result.output
    assert sorted(hits) == [f"/photo/data/S{i}/{name}" for i, name in enumerate(CAMERA)]
    rows = dict(_catalog(tmp_path / "s", "SELECT uri, vernacular_name FROM images"))
    assert rows[f"{base}/photo/data/S0/ocelot.jpg"] == "ocelot"
    with Collection.open(tmp_path / "s", read_only=True) as col:
        assert "outside" in col.failures()[0]["error"]


def _write_archive(folder: Path, media: list[tuple[str, str]]) -> Path:
    """occurrence core + Audubon Core multimedia extension (accessURI), tab-separated."""
    folder.mkdir(parents=True)
    occurrences = sorted({occ for occ, _ in media})
    (folder / "occurrence.txt").write_text(
        "".join(
            f"{occ}\tMUS\tC-{occ}\tPanthera leo\tAnimalia\tFelidae\tKE\n" for occ in occurrences
        )
    )
    (folder / "multimedia.txt").write_text("".join(
        f"{occ}\t{url}\tCC-BY-4.0\tA. Photographer\n" for occ, url in media))  # fmt: skip
    (folder / "meta.xml").write_text("""<?xml version="1.0"?>
<archive xmlns="http://rs.tdwg.org/dwc/text/">
 <core rowType="http://rs.tdwg.org/dwc/terms/Occurrence" fieldsTerminatedBy="\\t"
       fieldsEnclosedBy="" ignoreHeaderLines="0">
  <files><location>occurrence.txt</location></files><id index="0"/>
  <field index="0" term="http://rs.tdwg.org/dwc/terms/occurrenceID"/>
  <field index="1" term="http://rs.tdwg.org/dwc/terms/institutionCode"/>
  <field index="2" term="http://rs.tdwg.org/dwc/terms/catalogNumber"/>
  <field index="3" term="http://rs.tdwg.org/dwc/terms/scientificName"/>
  <field index="4" term="http://rs.tdwg.org/dwc/terms/kingdom"/>
  <field index="5" term="http://rs.tdwg.org/dwc/terms/family"/>
  <field index="6" term="http://rs.tdwg.org/dwc/terms/countryCode"/>
 </core>
 <extension rowType="http://rs.tdwg.org/ac/terms/Multimedia" fieldsTerminatedBy="\\t"
            fieldsEnclosedBy="" ignoreHeaderLines="0">
  <files><location>multimedia.txt</location></files><coreid index="0"/>
  <field index="1" term="http://rs.tdwg.org/ac/terms/accessURI"/>
  <field index="2" term="http://purl.org/dc/terms/license"/>
  <field index="3" term="http://purl.org/dc/terms/creator"/>
 </extension>
</archive>""")
    return folder


@pytest.mark.slow
def test_archive_with_remote_media(tmp_path: Path, tiny_model: str, media_server) -> None:
    base, hits = media_server
    media = [(f"occ{i // 2}", f"{base}/photo/{name}") for i, name in enumerate(CAMERA)]
    media += [("occ9", f"{base}/photo/nope.jpg"), ("occ9", f"{base}/slow"),
              ("occ9", f"{base}/text"), ("occ9", f"{base}/huge")]  # fmt: skip
    archive = _write_archive(tmp_path / "dwca", media)
    store = tmp_path / "s"
    with Collection.open(store, model=tiny_model, create=True) as col:
        first = col.index([archive], progress=False, download_timeout=DEADLINE,
                          max_download_bytes=2 * 1024 * 1024, allow_private_urls=True)  # fmt: skip
        assert (first.embedded, first.failed, first.occurrences) == (4, 4, 3)
        reasons = {f["uri"].rsplit("/", 1)[-1]: (f["stage"], f["error"])
                   for f in col.failures()}  # fmt: skip
        assert reasons["nope.jpg"] == ("download", "HTTP 404 Not Found")
        assert "timed out" in reasons["slow"][1].lower() or "timeout" in reasons["slow"][1].lower()
        assert "not an image" in reasons["text"][1]
        assert "too large" in reasons["huge"][1]
        rows = col.store.catalog.query(
            "SELECT occurrence_id, catalog_number, license, creator, family FROM images"
        )[1]
        assert ("occ0", "C-occ0", "CC-BY-4.0", "A. Photographer", "Felidae") in rows
        fetched = len(hits)
        second = col.index([archive], progress=False, download_timeout=DEADLINE,
                           max_download_bytes=2 * 1024 * 1024, allow_private_urls=True)  # fmt: skip
        assert (second.embedded, second.downloaded, second.unchanged) == (0, 0, 4)
        assert len(hits) == fetched  # nothing was asked of the server again
        retried = col.index([archive], progress=False, download_timeout=DEADLINE,
                            max_download_bytes=2 * 1024 * 1024, retry_failed=True,
                            allow_private_urls=True)  # fmt: skip
        assert (retried.embedded, retried.failed, retried.unchanged) == (0, 4, 4)
        assert len(hits) > fetched  # only the failed URLs were asked for again
        assert all("/photo/" not in h or "nope" in h for h in hits[fetched:])
    from click.testing import CliRunner

    from bioindex.cli import main

    grouped = CliRunner().invoke(main, [
        "search", "image", str(shared("camera-trap", CAMERA[0])), "-s", str(store),
        "--group-by", "occurrence", "--format", "json"])  # fmt: skip
    import json

    groups = json.loads(grouped.output)
    assert [g["occurrence_id"] for g in groups][0] == "occ0"
    assert sorted(g["occurrence_id"] for g in groups) == ["occ0", "occ1"]
    assert [g["images"] for g in groups] == [2, 2]
    assert_index_matches_catalog(store)


@pytest.mark.parametrize("kind", ["JPEG", "PNG", "GIF", "TIFF", "BMP", "WEBP", "HEIF", "AVIF",
                                  "JPEG2000", "J2K"])  # fmt: skip
def test_every_format_read_is_known_by_its_first_bytes(kind: str) -> None:
    """A server that sends photos as application/octet-stream: the first bytes decide. A
    phone's HEIC, an AVIF and a JPEG 2000 master were "not an image" that way."""
    from PIL import Image

    import bioindex.images  # noqa: F401  (registers the HEIF opener)

    out = io.BytesIO()
    picture = Image.new("RGB", (64, 48), (90, 140, 60))
    try:
        if kind == "J2K":  # a bare codestream, as .j2k files hold
            picture.save(out, "JPEG2000", no_jp2=True)
        else:
            picture.save(out, kind)
    except (KeyError, OSError):
        pytest.skip(f"this Pillow writes no {kind}")
    assert remote.looks_like_image(out.getvalue()[:64])
    assert Image.open(io.BytesIO(out.getvalue())).size == (64, 48)


@pytest.mark.parametrize("head", [b"<!DOCTYPE html><html>", b"PK\x03\x04", b"{\"error\": 1}",
                                  b"\x00\x00\x00\x18ftypmp42"])  # fmt: skip
def test_what_is_not_an_image_is_not_taken_for_one(head: bytes) -> None:
    assert not remote.looks_like_image(head)


@pytest.mark.parametrize("sample, occurrences, media", [
    ("dwcahandler-sample1", 12, 3), ("dwcahandler-sample2", 8, 8)])  # fmt: skip
def test_real_quoted_archives_parse_and_fake_urls_fail(
    tmp_path: Path, tiny_model: str, no_network_beyond_loopback, sample, occurrences, media
) -> None:
    folder = shared("dwca", sample)
    with Archive(folder) as archive:
        records = list(archive.occurrences())
    assert len(records) == occurrences
    assert sum(len(r.media) for r in records) == media
    assert all(r.terms.get("scientificName") for r in records)
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as col:
        summary = col.index([folder], progress=False)
        assert (summary.occurrences, summary.embedded, summary.failed) == (occurrences, 0, media)
        assert {f["stage"] for f in col.failures()} == {"download"}


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_webdataset_shards_with_tree_of_life_keys(tmp_path: Path, tiny_model: str) -> None:
    photos = draw_images(tmp_path / "p", 6, seed=31)
    lineage = "Animalia Chordata Aves Passeriformes Cardinalidae Cardinalis cardinalis"
    for number in range(2):
        with tarfile.open(tmp_path / f"shard-{number:06d}.tar", "w") as tar:
            for i, photo in enumerate(photos[number * 3 : number * 3 + 3]):
                key = f"{number}{i:05d}"
                _tar_add(tar, f"{key}.jpg", photo.read_bytes())
                _tar_add(tar, f"{key}.taxonomic_name.txt", lineage.encode())
                _tar_add(tar, f"{key}.common_name.txt", b"northern cardinal")
                _tar_add(tar, f"{key}.sci.txt", b"a photo of Cardinalis cardinalis.")
    # A third shard cut off in the middle of its last image.
    with tarfile.open(tmp_path / "shard-000002.tar", "w") as tar:
        _tar_add(tar, "200000.jpg", photos[0].read_bytes())
        _tar_add(tar, "200000.taxonomic_name.txt", lineage.encode())
        _tar_add(tar, "200001.jpg", photos[1].read_bytes())
    data = (tmp_path / "shard-000002.tar").read_bytes()
    cut = data.index(photos[1].read_bytes()[:64]) + 200
    (tmp_path / "shard-000002.tar").write_bytes(data[:cut])
    pattern = str(tmp_path / "shard-{000000..000002}.tar")
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as col:
        summary = col.index([pattern], progress=False)
        assert summary.embedded == 7 and summary.failed == 1
        failure = col.failures()[0]
        assert failure["uri"].endswith("shard-000002.tar#200001")
        assert "truncated" in failure["error"] or "tar" in failure["error"]
        row = col.store.catalog.query(
            'SELECT kingdom, "order", genus, specific_epithet, scientific_name, vernacular_name '
            "FROM images LIMIT 1"
        )[1][0]
        assert row == ("Animalia", "Passeriformes", "Cardinalis", "cardinalis",
                       "Cardinalis cardinalis", "northern cardinal")  # fmt: skip
        hit = col.search_image(photos[4], k=1)[0]
        assert hit.uri.endswith("shard-000001.tar#100001") and hit.score >= 0.99
        again = col.index([pattern], progress=False)
        assert (again.embedded, again.unchanged) == (0, 7)
    assert_index_matches_catalog(tmp_path / "s")


def test_a_zip_of_photos_is_indexed_in_place(tmp_path: Path, tiny_model: str) -> None:
    """A zip without meta.xml (a camera trap's download, a folder zipped to be sent) was
    refused as "has no meta.xml": its photos are now indexed from the zip, deflated or
    stored — and bzip2 or LZMA, as 7-Zip can write them, which were "unzip it" failures —
    with the vectors the unzipped files give; members it cannot read in place are failures
    on record, and other files in it are left alone."""
    import zipfile

    photos = draw_images(tmp_path / "p", 7, seed=41)
    archive = tmp_path / "trip.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for i, photo in enumerate(photos[:4]):
            method = zipfile.ZIP_DEFLATED if i % 2 else zipfile.ZIP_STORED
            zipped.write(photo, f"trip/day{i}/{photo.name}", compress_type=method)
        zipped.write(photos[4], "trip/bzip2.jpg", compress_type=zipfile.ZIP_BZIP2)
        zipped.write(photos[5], "trip/lzma.jpg", compress_type=zipfile.ZIP_LZMA)
        zipped.write(photos[6], "trip/deflate64.jpg", compress_type=zipfile.ZIP_DEFLATED)
        zipped.writestr("trip/notes.txt", "field notes")
        zipped.writestr("__MACOSX/trip/._x.jpg", b"resource fork")
        zipped.writestr("trip/locked.jpg", photos[0].read_bytes())
    _mark_encrypted(archive, "trip/locked.jpg")  # zipfile writes no encrypted members
    _mark_method(archive, "trip/deflate64.jpg", 9)  # nor Deflate64, which it cannot read
    (tmp_path / "meta.csv").write_text(f"file,scientificName\n{photos[1].name},Ursus arctos\n")
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as col:
        summary = col.index([archive], metadata=tmp_path / "meta.csv", progress=False)
        assert (summary.embedded, summary.failed) == (6, 2)
        reasons = {f["uri"].rsplit("#", 1)[1]: f["error"] for f in col.failures()}
        assert reasons["trip/locked.jpg"] == "encrypted in the zip"
        assert "zip method 9" in reasons["trip/deflate64.jpg"]
        named = col.store.catalog.query("SELECT uri FROM images WHERE scientific_name = "
                                        "'Ursus arctos'")[1]  # fmt: skip
        assert named == [(f"{archive}#trip/day1/{photos[1].name}",)]
        members = [f"trip/day{i}/{photo.name}" for i, photo in enumerate(photos[:4])]
        for photo, member in zip(photos, [*members, "trip/bzip2.jpg", "trip/lzma.jpg"]):
            hit = col.search_image(photo, k=1)[0]
            assert hit.uri == f"{archive}#{member}" and hit.score >= 0.999
        again = col.index([archive], progress=False)
        assert (again.embedded, again.unchanged) == (0, 6)
    assert_index_matches_catalog(tmp_path / "s")


def _mark_method(archive: Path, name: str, method: int) -> None:
    """Say in a member's local header and central directory entry that it is compressed by
    `method` (its bytes unchanged)."""
    import struct
    import zipfile

    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zipped:
        offset = zipped.getinfo(name).header_offset
    data[offset + 8 : offset + 10] = struct.pack("<H", method)
    at = data.find(b"PK\x01\x02")
    while at != -1:
        length = struct.unpack("<H", data[at + 28 : at + 30])[0]
        if data[at + 46 : at + 46 + length] == name.encode():
            data[at + 10 : at + 12] = struct.pack("<H", method)
        at = data.find(b"PK\x01\x02", at + 46)
    archive.write_bytes(bytes(data))


def _mark_encrypted(archive: Path, name: str) -> None:
    """Set a member's "encrypted" flag in its local header and central directory entry."""
    import struct
    import zipfile

    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zipped:
        data[zipped.getinfo(name).header_offset + 6] |= 0x1
    at = data.find(b"PK\x01\x02")
    while at != -1:
        length = struct.unpack("<H", data[at + 28 : at + 30])[0]
        if data[at + 46 : at + 46 + length] == name.encode():
            data[at + 8] |= 0x1
        at = data.find(b"PK\x01\x02", at + 4)
    archive.write_bytes(bytes(data))


def test_a_zip_member_is_read_no_further_than_its_zip_says(tmp_path: Path) -> None:
    """A member whose deflated bytes inflate past the size its zip declares is damaged or
    lying: a failure, never more bytes than declared."""
    import zlib

    from bioindex.indexer.sources import Item

    big = bytes(range(256)) * 4000
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    packed = packer.compress(big) + packer.flush()
    (tmp_path / "x.zip").write_bytes(b"head" + packed)
    honest = Item("x.zip#a.jpg", str(tmp_path / "x.zip"), len(big), 0.0, {}, 4, len(packed))
    assert honest.read_bytes() == big
    assert honest.read_head(1000) == big[:1000]  # enough to tell a format, inflated alone
    lying = Item("x.zip#a.jpg", str(tmp_path / "x.zip"), 1000, 0.0, {}, 4, len(packed))
    with pytest.raises(OSError, match="inflates past the 1000 bytes"):
        lying.read_bytes()
    cut = Item("x.zip#a.jpg", str(tmp_path / "x.zip"), len(big), 0.0, {}, 4, len(packed) + 9)
    with pytest.raises(OSError, match="truncated"):
        cut.read_bytes()


def test_a_zipped_archive_with_its_photos_inside_is_indexed_from_the_zip(
        tmp_path: Path, tiny_model: str) -> None:  # fmt: skip
    """`zip -r export.zip export/` makes what a curator sends: a Darwin Core Archive in a
    folder of the zip, its photos beside the tables, deflated. Its photos were looked for
    on disk beside the zip (every one failed "No such file"), and a stored photo of such
    a zip was indexed under a name without the folder, so no thumbnail or export found its
    bytes. Both are read from the zip now, under their member names."""
    import zipfile

    from bioindex.indexer.stored import image_bytes

    photos = draw_images(tmp_path / "p", 3, seed=43)
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr("export/occurrence.csv", "coreid,dwc:scientificName\n"
                        + "".join(f"u{i},Ursus arctos\n" for i in range(3)))  # fmt: skip
        zipped.writestr("export/multimedia.csv", "coreid,ac:accessURI,dcterms:format\n"
                        + "".join(f"u{i},./media/{p.name},image/jpeg\n"
                                  for i, p in enumerate(photos)))  # fmt: skip
        for i, photo in enumerate(photos):
            method = zipfile.ZIP_STORED if i == 0 else zipfile.ZIP_DEFLATED
            zipped.write(photo, f"export/media/{photo.name}", compress_type=method)
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as col:
        summary = col.index([archive], progress=False)
        assert (summary.embedded, summary.failed) == (3, 0), col.failures()
        rows = col.store.catalog.query("SELECT uri, size, scientific_name FROM images "
                                       "ORDER BY uri")[1]  # fmt: skip
        assert [r[0] for r in rows] == sorted(f"{archive}#export/media/{p.name}"
                                              for p in photos)  # fmt: skip
        assert {r[2] for r in rows} == {"Ursus arctos"}
        by_name = {photo.name: photo.read_bytes() for photo in photos}
        for uri, size, _ in rows:
            assert image_bytes(tmp_path / "s", {"uri": uri, "size": size}) == \
                by_name[uri.rsplit("/", 1)[1]]
        for photo in photos:
            assert col.search_image(photo, k=1)[0].score >= 0.999
        assert col.index([archive], progress=False).unchanged == 3


def test_manifest_with_paths_and_urls(tmp_path: Path, tiny_model: str, media_server) -> None:
    base, _ = media_server
    photos = draw_images(tmp_path / "p", 3, seed=2)
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["url", "dwc:scientificName", "Catalog_Number", "note"])
        writer.writerow([f"p/{photos[0].relative_to(tmp_path / 'p')}", "Felis catus", "A1", "x"])
        writer.writerow([str(photos[1]), "Felis catus", "A2", ""])
        writer.writerow([f"{base}/photo/ocelot.jpg", "Leopardus pardalis", "A3", ""])
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as col:
        summary = col.index([manifest], progress=False, allow_private_urls=True)
        assert summary.embedded == 3
    rows = _catalog(tmp_path / "s", "SELECT catalog_number, scientific_name, extra FROM images "
                                    "ORDER BY catalog_number")  # fmt: skip
    assert [r[:2] for r in rows] == [("A1", "Felis catus"), ("A2", "Felis catus"),
                                     ("A3", "Leopardus pardalis")]  # fmt: skip
    assert '"note": "x"' in rows[0][2]


def test_sidecar_with_mixed_darwin_core_spellings(tmp_path: Path, tiny_model: str) -> None:
    photos = draw_images(tmp_path / "p", 3, seed=3)
    sidecar = tmp_path / "meta.tsv"
    names = [p.relative_to(tmp_path / "p").as_posix() for p in photos]
    sidecar.write_text(
        "File\tdwc:catalogNumber\tScientificName\tinstitution_code\tdecimalLatitude\n"
        f"{names[0]}\tX-1\tFelis catus\tFMNH\t12.5\n"
        f"{photos[1].name}\tX-2\tCanis lupus\tMCZ\t-3\n"
        f"{photos[2].name}\t\t\t\t45°N\n"  # not a decimal: kept as written
    )  # fmt: skip
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as col:
        col.index([tmp_path / "p"], metadata=sidecar, progress=False)
    rows = _catalog(tmp_path / "s", "SELECT catalog_number, scientific_name, institution_code, "
                                    "decimal_latitude FROM images ORDER BY uri")  # fmt: skip
    assert ("X-1", "Felis catus", "FMNH", 12.5) in rows
    assert ("X-2", "Canis lupus", "MCZ", -3.0) in rows
    assert (None, None, None, None) in rows  # the third picture's latitude is no number
    extras = _catalog(tmp_path / "s", "SELECT extra FROM images WHERE extra IS NOT NULL")
    assert extras == [('{"verbatimLatitude": "45\\u00b0N"}',)], extras


def test_sidecar_rows_naming_no_image_are_warned_of(tmp_path: Path) -> None:
    from bioindex.indexer.sources import scan_paths

    photos = draw_images(tmp_path / "p", 2, seed=3)
    sidecar = tmp_path / "meta.csv"
    sidecar.write_text(f"file,scientificName\n{photos[0].name},Felis catus\n"
                       f"{photos[1].name},Canis lupus\n")  # fmt: skip
    assert scan_paths([tmp_path / "p"], metadata_file=str(sidecar)).warnings == []
    with sidecar.open("a") as out:  # a typo, and a file never copied
        out.write("img0000.jgp,Felis catus\nlost/a.jpg,Canis lupus\n")
    warnings = scan_paths([tmp_path / "p"], metadata_file=str(sidecar)).warnings
    assert warnings == [f"2 of the 4 rows of {sidecar} name no image under the sources "
                        "(first: img0000.jgp)"]  # fmt: skip


def test_unknown_source_and_missing_shards(tmp_path: Path, tiny_model: str) -> None:
    from bioindex.errors import BioindexError

    (tmp_path / "notes.doc").write_text("x")
    with pytest.raises(BioindexError, match="not a folder, image, table"):
        Collection.open(tmp_path / "s", model=tiny_model, create=True).index(
            [tmp_path / "notes.doc"]
        )
    with pytest.raises(BioindexError, match="does not exist"):
        Collection.open(tmp_path / "s2", model=tiny_model, create=True).index(
            [str(tmp_path / "x-{0..2}.tar")]
        )
    shutil.rmtree(tmp_path / "s", ignore_errors=True)


def test_idigbio_layout_with_local_media(tmp_path: Path, tiny_model: str) -> None:
    """iDigBio exports: occurrence.csv + multimedia.csv joined on coreid, no meta.xml."""
    export = tmp_path / "idigbio"
    (export / "media").mkdir(parents=True)
    for name in CAMERA[:2]:
        shutil.copy(shared("camera-trap", name), export / "media" / name)
    (export / "occurrence.csv").write_text(
        "coreid,dwc:catalogNumber,dwc:scientificName,dwc:institutionCode\n"
        "u1,FMNH-1,Leopardus pardalis,FMNH\n"
        "u2,FMNH-2,Ursus americanus,FMNH\n"
        "u3,FMNH-3,Panthera leo,FMNH\n"
    )  # fmt: skip
    (export / "multimedia.csv").write_text(
        "coreid,ac:accessURI,dcterms:format\n"
        f"u1,media/{CAMERA[0]},image/jpeg\n"
        f"u2,media/{CAMERA[1]},image/jpeg\n"
    )  # fmt: skip
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as col:
        summary = col.index([export], progress=False)
        assert (summary.occurrences, summary.embedded, summary.failed) == (3, 2, 0)
        rows = col.store.catalog.query(
            "SELECT catalog_number, genus, specific_epithet FROM images ORDER BY catalog_number"
        )[1]
    assert rows == [("FMNH-1", "Leopardus", "pardalis"), ("FMNH-2", "Ursus", "americanus")]


def test_a_semicolon_table_from_excel_is_read(tmp_path: Path, tiny_model: str) -> None:
    """Excel saves "CSV" with semicolons where the comma is the decimal mark (German,
    French, Dutch settings): the whole header was one column, refused as having no file
    column, and a coordinate "-1,2916" was no number."""
    photos = tmp_path / "trap"
    photos.mkdir()
    for name in CAMERA[:2]:
        shutil.copy(shared("camera-trap", name), photos / name)
    table = tmp_path / "fundorte.csv"
    table.write_bytes("file;scientificName;decimalLatitude;decimalLongitude;locality\n"
                      f"{CAMERA[0]};Leopardus pardalis;-1,2916;36,82;Nairobi; Kenia\n"
                      .replace("Nairobi; Kenia", '"Nairobi; Kenia"').encode())  # fmt: skip
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as col:
        col.index([photos], metadata=table, progress=False)
        row = col.store.catalog.query(
            "SELECT scientific_name, decimal_latitude, decimal_longitude, extra FROM images "
            f"WHERE uri LIKE '%{CAMERA[0]}'")[1][0]  # fmt: skip
    assert row[:3] == ("Leopardus pardalis", -1.2916, 36.82)
    assert '"locality": "Nairobi; Kenia"' in row[3]
    # A training table and a checklist likewise.
    from bioindex.search.labels import checklist_taxa

    taxa = checklist_taxa("species;family\nPanthera leo;Felidae\n", "list")
    assert [(t.genus, t.family) for t in taxa] == [("Panthera", "Felidae")]


def test_an_excel_workbook_is_a_table(tmp_path: Path, tiny_model: str) -> None:
    """Curators keep their records in Excel: an .xlsx as --metadata was "line 1 is not
    UTF-8 text". As a sidecar, a manifest and a checklist it is read as its CSV export
    would be; a damaged one and a bomb are one line."""
    import datetime
    import zipfile

    import openpyxl

    photos = tmp_path / "trap"
    photos.mkdir()
    for name in CAMERA[:2]:
        shutil.copy(shared("camera-trap", name), photos / name)
    book = openpyxl.Workbook()
    book.active.append(["file", "scientificName", "catalogNumber", "eventDate", "habitat"])
    book.active.append([CAMERA[0], "Leopardus pardalis", 12345, datetime.datetime(2006, 2, 10),
                        "forest"])  # fmt: skip
    book.active.append([None] * 5)
    book.active.append([CAMERA[1], "Ursus americanus", 77.0,
                        datetime.datetime(2016, 9, 25, 18, 35), None])  # fmt: skip
    book.save(tmp_path / "records.xlsx")
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as col:
        col.index([photos], metadata=tmp_path / "records.xlsx", progress=False)
        rows = {Path(uri).name: rest for uri, *rest in col.store.catalog.query(
            "SELECT uri, scientific_name, catalog_number, event_date, extra FROM images")[1]}
    assert rows[CAMERA[0]] == ["Leopardus pardalis", "12345", "2006-02-10",
                               '{"habitat": "forest"}']  # fmt: skip
    assert rows[CAMERA[1]][:3] == ["Ursus americanus", "77", "2016-09-25T18:35:00"]
    # As the source: a manifest with a path column.
    book = openpyxl.Workbook()
    book.active.append(["path", "scientificName"])
    book.active.append([f"trap/{CAMERA[0]}", "Leopardus pardalis"])
    book.save(tmp_path / "manifest.xlsx")
    with Collection.open(tmp_path / "m", model=tiny_model, create=True) as col:
        assert col.index([tmp_path / "manifest.xlsx"], progress=False).embedded == 1
    # A checklist.
    from bioindex.search.place import species_list_prior

    book = openpyxl.Workbook()
    book.active.append(["species", "family"])
    book.active.append(["Panthera leo", "Felidae"])
    book.save(tmp_path / "list.xlsx")
    assert species_list_prior(tmp_path / "list.xlsx").taxa[0].family == "Felidae"
    # Damaged, and a bomb: one line each.
    (tmp_path / "broken.xlsx").write_bytes((tmp_path / "list.xlsx").read_bytes()[:300])
    with zipfile.ZipFile(tmp_path / "bomb.xlsx", "w", zipfile.ZIP_DEFLATED) as bomb:
        bomb.writestr("xl/sharedStrings.xml", b"\0" * (80 << 20))
    for name, said in (("broken.xlsx", "not a readable Excel workbook"),
                       ("bomb.xlsx", "zip bomb")):  # fmt: skip
        result = CliRunner().invoke(main, ["index", str(photos), "--store", str(tmp_path / "b"),
                                           "--metadata", str(tmp_path / name)])  # fmt: skip
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code != 0 and len(lines) == 1 and said in lines[0], result.output


def _index_named_by_folders(root: Path, layout: dict[str, str], tmp_path: Path,
                            metadata: str, tiny_model: str):  # fmt: skip
    """The camera-trap fixtures copied into `layout`'s folders, indexed into tmp_path/s
    with --names-from-folders and `metadata` as its table."""
    for folder, name in layout.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(shared("camera-trap", name), root / folder / name)
    (tmp_path / "m.csv").write_text(metadata)
    result = CliRunner().invoke(main, ["index", str(root), "--store", str(tmp_path / "s"),
                                       "--model", tiny_model, "--names-from-folders", "-q",
                                       "--metadata", str(tmp_path / "m.csv")])  # fmt: skip
    assert result.exit_code == 0, result.output
    return result


def test_names_from_folders_a_species_per_folder(tmp_path: Path, tiny_model: str) -> None:
    """Photos kept a folder per species (as iNaturalist exports and image-classification
    sets are): `--names-from-folders` names them in one step, says which folders gave
    names and which did not, and never overrides a name the metadata gives. A species
    folder's subfolders (years, cameras) were left unnamed before."""
    root = tmp_path / "photos"
    layout = {"Leopardus pardalis": "ocelot.jpg", "Ursus_americanus": "american_black_bear.jpg",
              "Animalia_Chordata_Mammalia_Carnivora_Canidae_Canis_familiaris": "domestic_dog.jpg",
              "site3": "blank.jpg", "Bos taurus": "domestic_cattle.jpg",
              "Panthera leo/2023/cam 2": "african_elephants.jpg"}  # fmt: skip
    result = _index_named_by_folders(root, layout, tmp_path,
                                     "file,scientificName\ndomestic_cattle.jpg,Bos indicus\n",
                                     tiny_model)  # fmt: skip
    assert "note: named 4 photos for their folders" in result.output
    assert "1 photo in folders not named for a species ('site3')" in result.output
    rows = {Path(uri).name: rest for uri, *rest in _catalog(
        tmp_path / "s", "SELECT uri, scientific_name, family, genus FROM images")}
    assert rows["ocelot.jpg"] == ["Leopardus pardalis", None, "Leopardus"]
    assert rows["american_black_bear.jpg"][0] == "Ursus americanus"
    assert rows["domestic_dog.jpg"] == ["Canis familiaris", "Canidae", "Canis"]
    # The nearest folder named for a species, however deep the photo lies under it.
    assert rows["african_elephants.jpg"][0] == "Panthera leo"
    assert rows["blank.jpg"] == [None, None, None]
    assert rows["domestic_cattle.jpg"][0] == "Bos indicus"  # the metadata's, not the folder's
    plain = CliRunner().invoke(main, ["index", str(root), "--store", str(tmp_path / "p"),
                                      "--model", tiny_model, "-q"])  # fmt: skip
    assert "named" not in plain.output  # only when asked


def test_names_from_folders_of_common_names(tmp_path: Path, tiny_model: str) -> None:
    """A camera trap's photos sorted into zebra/, african_elephant/2023/ …: no folder is
    named for a species, and `--names-from-folders` named nothing ("in folders not named
    for a species: left unnamed"). Where none is, the folders' names are the photos' common
    names — as training folders are read — and the run says so."""
    root = tmp_path / "sorted"
    layout = {"ocelot": "ocelot.jpg", "black_bear": "american_black_bear.jpg",
              "african elephant/2023/05": "african_elephants.jpg",
              "african elephant/cam 2": "african_elephants_bw.jpg", ".": "blank.jpg",
              "2023": "domestic_cattle.jpg", "dog": "domestic_dog.jpg"}  # fmt: skip
    result = _index_named_by_folders(root, layout, tmp_path,
                                     "file,vernacularName\ndog/domestic_dog.jpg,domestic dog\n",
                                     tiny_model)  # fmt: skip
    assert ("no folder is named for a species; named 4 photos by their folders as common "
            "names: african elephant (2)") in result.output, result.output
    rows = {Path(uri).name: rest for uri, *rest in _catalog(
        tmp_path / "s", "SELECT uri, vernacular_name, scientific_name FROM images")}
    assert rows["ocelot.jpg"] == ["ocelot", None]
    assert rows["american_black_bear.jpg"] == ["black bear", None]
    assert rows["african_elephants.jpg"] == rows["african_elephants_bw.jpg"] == [
        "african elephant", None]  # the folder below the source, not "05" nor "cam 2"
    assert rows["blank.jpg"] == rows["domestic_cattle.jpg"] == [None, None]  # top, digits
    assert rows["domestic_dog.jpg"] == ["domestic dog", None]  # the metadata's
    from bioindex import Collection

    with Collection.open(tmp_path / "s") as collection:
        assert collection.common_names() == ["african elephant", "black bear",
                                             "domestic dog", "ocelot"]  # fmt: skip
