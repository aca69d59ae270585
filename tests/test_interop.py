"""The collections world's formats: Darwin Core Archives out (and back in), embeddings out,
IIIF in, and the list of known models."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bioindex import Collection
from bioindex.cli import main
from bioindex.indexer.dwca import Archive
from bioindex.models import ALIASES
from bioindex.search.labels import labels_from_strings
from bioindex.store import ImageRecord, Store
from tests.conftest import draw_images, shared

TEXT = "{http://rs.tdwg.org/dwc/text/}"
MEDIA_META = """  <extension encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n"
      fieldsEnclosedBy="" ignoreHeaderLines="1" rowType="http://rs.gbif.org/terms/1.0/Multimedia">
    <files><location>multimedia.txt</location></files>
    <coreid index="0"/>
    <field index="1" term="http://purl.org/dc/terms/identifier"/>
    <field index="2" term="http://purl.org/dc/terms/license"/>
    <field index="3" term="http://purl.org/dc/terms/rightsHolder"/>
  </extension>
</archive>"""


def _gbif_archive_with_images(folder: Path, count: int = 12) -> tuple[Path, list[str]]:
    """The fixtures' GBIF download, unpacked, with a Simple Multimedia extension giving
    `count` of its occurrences one local image each."""
    with zipfile.ZipFile(shared("dwca", "gbif-results.zip")) as source:
        source.extractall(folder)
    occurrence_ids = [line.split("\t")[0] for line in
                      (folder / "occurrence.txt").read_text(encoding="utf-8").splitlines()]
    photos = draw_images(folder / "media", count, seed=31)
    lines = ["coreid\tidentifier\tlicense\trightsHolder"]
    for n, (occurrence, photo) in enumerate(zip(occurrence_ids, photos)):
        licence = "http://creativecommons.org/licenses/by/4.0/" if n % 2 else "CC0-1.0"
        lines.append(f"{occurrence}\t{photo.relative_to(folder).as_posix()}\t{licence}\tMuseum {n}")
    (folder / "multimedia.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    meta = (folder / "meta.xml").read_text(encoding="utf-8")
    (folder / "meta.xml").write_text(meta.replace("</archive>", MEDIA_META), encoding="utf-8")
    return folder, occurrence_ids[:count]


def _keyed(store: Path, sql: str) -> dict[str, tuple]:
    """Rows of a catalog query by their first column."""
    with Store.open(store, read_only=True) as opened:
        return {row[0]: row[1:] for row in opened.catalog.query(sql)[1]}


def _occurrences(store: Path) -> dict[str, tuple]:
    return _keyed(store, "SELECT occurrence_id, catalog_number, institution_code, "
                         "scientific_name, license, decimal_latitude, event_date FROM occurrences")


def _images(store: Path) -> dict[str, tuple]:
    return _keyed(store, "SELECT sha256, occurrence_id, catalog_number, license, rights_holder "
                         "FROM images WHERE status='live'")


def test_darwin_core_archive_round_trip(tmp_path: Path, tiny_model: str) -> None:
    source, with_images = _gbif_archive_with_images(tmp_path / "gbif")
    first = tmp_path / "first"
    with Collection.open(first, model=tiny_model, create=True) as collection:
        summary = collection.index([source], progress=False)
        assert (summary.embedded, summary.occurrences) == (12, 158)
        written = collection.export(tmp_path / "out.zip", identify=True, rank="genus",
                                    with_media=True)  # fmt: skip
    assert written["occurrences"] == 158 and written["images"] == 12
    assert written["identifications"] == 12 and written["media_copied"] == 12

    result = CliRunner().invoke(main, ["index", str(tmp_path / "out.zip"), "-s",
                                       str(tmp_path / "second"), "-m", tiny_model, "-q"])
    assert result.exit_code == 0, result.output
    assert _occurrences(tmp_path / "second") == _occurrences(first)
    assert _images(tmp_path / "second") == _images(first)
    assert {row[0] for row in _images(first).values()} == set(with_images)
    from tests.test_iiif import _thumbnails_served

    assert _thumbnails_served(tmp_path / "second") == 12  # read from inside the zip

    with zipfile.ZipFile(tmp_path / "out.zip") as archive:
        identified = archive.read("identification.txt").decode().splitlines()
        eml = archive.read("metadata.xml").decode()
    header = identified[0].split("\t")
    assert len(identified) == 13 and header[:3] == ["occurrenceID", "scientificName", "taxonRank"]
    assert all(line.split("\t")[2] == "genus" for line in identified[1:])
    assert all(line.split("\t")[0] in with_images for line in identified[1:])
    with Store.open(first, read_only=True) as opened:
        assert opened.model["weights_sha256"] in eml and "zero-shot at rank genus" in eml


def test_images_from_inside_zips_and_tars_are_exported_as_media(tmp_path: Path,
                                                                  tiny_model: str) -> None:
    """Images indexed from a zip of photos or a webdataset shard were named in the exported
    archive by a bare "x.zip#member" path of format application/zip, and --with-media
    copied none of them without a word. They are now copied (their own bytes, their own
    format), or named by the container's file URI."""
    import tarfile

    photos = draw_images(tmp_path / "p", 4, seed=17)
    with zipfile.ZipFile(tmp_path / "trip.zip", "w", zipfile.ZIP_DEFLATED) as zipped:
        for photo in photos[:2]:
            zipped.write(photo, f"trip/{photo.name}")
    with tarfile.open(tmp_path / "shard-000000.tar", "w") as tar:
        for number, photo in enumerate(photos[2:]):
            tar.add(photo, arcname=f"{number:06d}.jpg")
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as col:
        col.index([tmp_path / "trip.zip", tmp_path / "shard-000000.tar"], progress=False)
        copied = col.export(tmp_path / "with.zip", with_media=True)
        named = col.export(tmp_path / "without.zip")
    assert (copied["media_copied"], copied["media_referenced"]) == (4, 0)
    assert (named["media_copied"], named["media_referenced"]) == (0, 4)
    with zipfile.ZipFile(tmp_path / "with.zip") as archive:
        rows = [line.split("\t") for line in
                archive.read("multimedia.txt").decode().splitlines()[1:]]  # fmt: skip
        media = {archive.read(row[1]) for row in rows}
    assert media == {photo.read_bytes() for photo in photos}
    assert all(row[3].startswith("image/") for row in rows), rows  # not application/zip
    with zipfile.ZipFile(tmp_path / "without.zip") as archive:
        identifiers = sorted(line.split("\t")[1] for line in
                             archive.read("multimedia.txt").decode().splitlines()[1:])
    expected = sorted([(tmp_path / "trip.zip").as_uri() + f"#trip/{p.name}" for p in photos[:2]]
                      + [(tmp_path / "shard-000000.tar").as_uri() + f"#{n:06d}"
                         for n in range(2)])  # fmt: skip
    assert identifiers == expected
    result = CliRunner().invoke(main, ["index", str(tmp_path / "with.zip"), "-s",
                                       str(tmp_path / "again"), "-m", tiny_model, "-q"])
    assert result.exit_code == 0, result.output
    with Collection.open(tmp_path / "again", read_only=True) as col:
        assert col.search_image(photos[3], k=1)[0].score >= 0.999
    from tests.test_iiif import _thumbnails_served

    assert _thumbnails_served(tmp_path / "s") == 4  # read from inside the zip and the tar


def _structure(meta: bytes) -> tuple[set, set, set]:
    root = ET.fromstring(meta)
    core = root.find(f"{TEXT}core")
    return ({c.tag for c in root}, set(core.attrib), {c.tag for c in core})


def test_exported_meta_xml_is_shaped_like_gbif_downloads(tmp_path: Path, tiny_model: str) -> None:
    draw_images(tmp_path / "photos", 6, seed=3)
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as collection:
        collection.index([tmp_path / "photos"], progress=False)
        written = collection.export(tmp_path / "plain.zip")  # a plain folder: no records
        free = labels_from_strings(["cat", "Felis"], "labels")
        labelled = collection.export(tmp_path / "labels.zip", identify=True, labels=free,
                                     min_confidence=0.0)  # fmt: skip
    with zipfile.ZipFile(tmp_path / "labels.zip") as archive:
        table = archive.read("identification.txt").decode().splitlines()
    header, rows = table[0].split("\t"), [dict(zip(table[0].split("\t"), line.split("\t")))
                                          for line in table[1:]]  # fmt: skip
    assert labelled["identifications"] == 6 == len(rows)
    assert "vernacularName" in header
    # A free label has no rank; "cat" is a common name (in scientificName GBIF would read it
    # as a wrong Latin name), "Felis" reads as one.
    assert all(r["taxonRank"] == "" for r in rows)
    assert all((r["scientificName"], r["vernacularName"]) in (("", "cat"), ("Felis", ""))
               for r in rows), rows  # fmt: skip
    assert written["occurrences"] == 6 and written["media_referenced"] == 6
    with zipfile.ZipFile(shared("dwca", "gbif-results.zip")) as gbif:
        reference = _structure(gbif.read("meta.xml"))
    with zipfile.ZipFile(tmp_path / "plain.zip") as ours:
        meta = ours.read("meta.xml")
        names = set(ours.namelist())
        tables = {name: ours.read(name).decode() for name in names if name.endswith(".txt")}
    tags, core_attributes, core_children = _structure(meta)
    assert ET.fromstring(meta).tag == f"{TEXT}archive"
    assert core_attributes == reference[1] and core_children == reference[2]
    assert tags <= {f"{TEXT}core", f"{TEXT}extension"}
    for table in ET.fromstring(meta):
        location = table.find(f"{TEXT}files/{TEXT}location").text
        indexes = [int(f.get("index")) for f in table.findall(f"{TEXT}field")]
        assert location in names and indexes == list(range(len(indexes)))
        assert all(f.get("term").startswith("http://") for f in table.findall(f"{TEXT}field"))
        lines = tables[location].splitlines()
        assert all(len(line.split("\t")) == len(indexes) for line in lines)
    with Archive(tmp_path / "plain.zip") as archive:  # and bioindex reads it back
        occurrences = list(archive.occurrences())
    assert len(occurrences) == 6 and all(len(o.media) == 1 for o in occurrences)


def test_export_chooses_by_filter_and_by_saved_results(tmp_path: Path, tiny_model: str) -> None:
    source, _ = _gbif_archive_with_images(tmp_path / "gbif")
    store = tmp_path / "s"
    with Collection.open(store, model=tiny_model, create=True) as collection:
        collection.index([source], progress=False)
        licensed = collection.export(tmp_path / "cc0.zip", where=["license=CC0-1.0"])
        hits = collection.search_text("a photo", k=3)
    assert licensed["images"] == 6 and licensed["occurrences"] == 6
    none = CliRunner().invoke(main, ["export", "-s", str(store), "--format", "npy", "-o",
                                     str(tmp_path / "none.npy"), "--where", "family=Nowhere"])
    assert none.exit_code == 1 and "nothing written" in none.output  # not an empty file
    assert not (tmp_path / "none.npy").exists()
    (tmp_path / "hits.json").write_text(json.dumps([h.to_dict() for h in hits]))
    result = CliRunner().invoke(main, ["export", "-s", str(store), "--format", "npy", "-o",
                                       str(tmp_path / "hits.npy"), "--from",
                                       str(tmp_path / "hits.json")])  # fmt: skip
    assert result.exit_code == 0, result.output
    vectors = np.load(tmp_path / "hits.npy")
    keys = (tmp_path / "hits.csv").read_text().splitlines()
    assert vectors.shape == (3, 32) and len(keys) == 4
    assert sorted(int(line.split(",")[0]) for line in keys[1:]) == sorted(h.image_id for h in hits)
    bad = CliRunner().invoke(main, ["export", "-s", str(store), "-o", str(tmp_path / "x.zip"),
                                    "--from", str(store / "manifest.json")])  # fmt: skip
    assert bad.exit_code == 1 and "not a search or classify result" in bad.output
    photo = next((source / "media").rglob("*.jpg"))  # bytes, not text: was a traceback
    binary = CliRunner().invoke(main, ["export", "-s", str(store), "-o", str(tmp_path / "x.zip"),
                                       "--from", str(photo)])  # fmt: skip
    assert binary.exit_code == 1 and "not a search or classify result" in binary.output
    for fmt in ("dwca", "npy"):  # a folder named as the output: one line, not a traceback
        folder = CliRunner().invoke(main, ["export", "-s", str(store), "--format", fmt,
                                           "-o", str(source)])  # fmt: skip
        assert folder.exit_code == 1 and "is a folder" in folder.output, folder.output
    # A classify result: its files' top predictions become the archive's identifications.
    photos = sorted(str(p) for p in (source / "media").rglob("*.jpg"))
    classified = CliRunner().invoke(main, ["classify", *photos, "-s", str(store), "--rank",
                                           "genus", "-k", "2", "--format", "json"])  # fmt: skip
    assert classified.exit_code == 0, classified.output
    (tmp_path / "classified.json").write_text(classified.stdout)
    result = CliRunner().invoke(main, ["export", "-s", str(store), "-o",
                                       str(tmp_path / "identified.zip"), "--from",
                                       str(tmp_path / "classified.json")])  # fmt: skip
    assert result.exit_code == 0, result.output
    with zipfile.ZipFile(tmp_path / "identified.zip") as archive:
        rows = [line.split("\t") for line in
                archive.read("identification.txt").decode().splitlines()[1:]]
    top = {}
    for row in json.loads(classified.stdout):
        top.setdefault(row["file"], row)
    assert len(rows) == len(photos) == len(top)
    assert sorted(r[1] for r in rows) == sorted(t["genus"] for t in top.values())
    assert all(r[2] == "genus" and "classify" in r[6] for r in rows)  # identificationRemarks


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.slow
def test_parquet_export_of_100k_vectors_streams_and_reads_back(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    dim, count, chunk = 512, 100_000, 10_000
    model = {"name": "random", "source": "test", "weights_sha256": "0", "dim": dim,
             "image_size": 224, "mean": [0.5] * 3, "std": [0.5] * 3, "preprocess": "eval"}
    rng = np.random.default_rng(0)
    with Store.create(tmp_path / "s", model) as store:
        for start in range(0, count, chunk):
            vectors = rng.standard_normal((chunk, dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            store.commit([ImageRecord(f"/x/{i}.jpg", 1, 1.0, None, 1, 1,
                                      {"catalogNumber": f"C{i}"})
                          for i in range(start, start + chunk)], vectors)  # fmt: skip
    with Collection.open(tmp_path / "s", read_only=True) as collection:
        # pyarrow's own start-up (libraries, pools: ~100 MB) is paid by a first small export.
        collection.export(tmp_path / "warm.parquet", "parquet", image_ids=[1, 2])
        Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again here
        before = _rss_mb("VmRSS")
        collection.export(tmp_path / "v.parquet", "parquet")
        peak = _rss_mb("VmHWM") - before
        print(f"export of {count} x {dim}: peak RSS +{peak:.0f} MB")
        # 100k x 512 float32 is 205 MB: a streaming export holds a batch, not the store.
        # (Seen: 37-63 MB alone, 74 once in a full parallel run; DuckDB's and pyarrow's
        # buffers vary with thread timing. Half the store is still far above any of them.)
        assert peak < 100, peak
        table = pq.read_table(tmp_path / "v.parquet")
        assert table.num_rows == count
        ids = table["image_id"].to_numpy()
        sample = rng.choice(count, 2000, replace=False)
        stored = collection.store.vectors(ids[sample].tolist())
        read = np.stack(table["embedding"].to_numpy(zero_copy_only=False)[sample])
        stored /= np.linalg.norm(stored, axis=1, keepdims=True)
        assert np.min(np.sum(stored * read, axis=1)) >= 0.9999
        assert np.allclose(np.linalg.norm(read, axis=1), 1, atol=1e-5)
        catalog = table["catalog_number"].to_pylist()
        rows = collection.store.rows(ids[sample[:50]].tolist())
        assert [catalog[i] for i in sample[:50]] == [rows[int(ids[i])]["catalog_number"]
                                                     for i in sample[:50]]  # fmt: skip


def test_models_lists_every_alias() -> None:
    result = CliRunner().invoke(main, ["models", "--format", "json"])
    assert result.exit_code == 0, result.output
    listed = {row["alias"]: row for row in json.loads(result.output)}
    assert set(ALIASES) | {"bioclip-demo"} == set(listed)
    assert listed["bioclip"]["hub"] == "hf-hub:imageomics/bioclip"
    assert (listed["bioclip"]["dim"], listed["bioclip-2"]["dim"]) == (512, 768)  # DESIGN.md
    assert listed["bioclip-2.5"]["architecture"] == "ViT-H-14"
    assert listed["bioclip-demo"]["dim"] == 64 and listed["bioclip-demo"]["cached"]


def test_a_photo_named_with_a_hash_sign_has_its_thumbnail_and_is_exported(
        tmp_path: Path, tiny_model: str) -> None:  # fmt: skip
    """A file named "specimen #12.jpg" was taken for member "12.jpg" of a container
    "specimen ": the page showed no thumbnail and export --with-media left it out. Only a
    zip or tar before the '#' makes a member, and a zip's own folder may hold one."""
    from tests.test_iiif import _thumbnails_served

    photos = draw_images(tmp_path / "draw", 3, seed=19)
    folder = tmp_path / "trip #3"
    folder.mkdir()
    names = ["specimen #12.jpg", "plain.jpg"]
    for photo, name in zip(photos, names):
        (folder / name).write_bytes(photo.read_bytes())
    with zipfile.ZipFile(folder / "more #2.zip", "w") as zipped:
        zipped.write(photos[2], "day #1/x#y.jpg")
    import tarfile

    extra = draw_images(tmp_path / "draw2", 1, seed=23)[0]
    with tarfile.open(folder / "shard-000000.tar", "w") as tar:  # a shard in "trip #3/"
        tar.add(extra, arcname="000000" + extra.suffix)
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as col:
        sources = [folder, folder / "more #2.zip", folder / "shard-000000.tar"]
        assert col.index(sources, progress=False).embedded == 4
        summary = col.export(tmp_path / "out.zip", with_media=True)
    assert (summary["media_copied"], summary["media_referenced"]) == (4, 0)
    with zipfile.ZipFile(tmp_path / "out.zip") as archive:
        copied = {archive.read(n) for n in archive.namelist() if n.startswith("media/")}
    assert copied == {photo.read_bytes() for photo in [*photos, extra]}
    assert _thumbnails_served(tmp_path / "s") == 4


def test_webdataset_members_are_exported_with_their_own_format(tmp_path: Path,
                                                                tiny_model: str) -> None:
    """A shard member is indexed as "shard.tar#000000" (webdataset's key): the export
    named every one image/jpeg, and copied them as media/N with no extension, PNGs too."""
    import io
    import tarfile

    from PIL import Image

    pictures = {"000000.png": "PNG", "000001.jpg": "JPEG", "000002.webp": "WEBP"}
    with tarfile.open(tmp_path / "shard-000000.tar", "w") as tar:
        for name, kind in pictures.items():
            data = io.BytesIO()
            Image.new("RGB", (64, 48), "teal").save(data, kind)
            info = tarfile.TarInfo(name)
            info.size = len(data.getvalue())
            tar.addfile(info, io.BytesIO(data.getvalue()))
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as col:
        assert col.index([tmp_path / "shard-000000.tar"], progress=False).embedded == 3
        col.export(tmp_path / "named.zip")
        col.export(tmp_path / "copied.zip", with_media=True)

    def media(path: Path) -> list[tuple[str, str]]:
        with zipfile.ZipFile(path) as archive:
            rows = archive.read("multimedia.txt").decode().splitlines()[1:]
        return sorted((row.split("\t")[1].rsplit(".", 1)[-1], row.split("\t")[3])
                      for row in rows)  # fmt: skip

    assert media(tmp_path / "copied.zip") == [("jpg", "image/jpeg"), ("png", "image/png"),
                                              ("webp", "image/webp")]  # fmt: skip
    assert sorted(kind for _, kind in media(tmp_path / "named.zip")) == [
        "image/jpeg", "image/png", "image/webp"]
