"""A camera trap's SpeciesNet files: the instances a run is given and the predictions it
writes, as --metadata beside the photos' folder or as the source itself."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from bioindex import Collection
from bioindex.cli import main
from bioindex.indexer.sources import scan_paths
from tests.conftest import shared

ELEPHANTS = {"african_elephants.jpg": "KE", "african_elephants_bw.jpg": "TZ",
             "african_elephants_cmyk.jpg": "UG",
             "african_elephants_with_exif_orientation.jpg": "BW"}  # fmt: skip


@pytest.fixture()
def trap(tmp_path: Path) -> Path:
    """The camera-trap fixtures as a user has them: photos and SpeciesNet's instances.json
    (its paths say test_data/…, the folder SpeciesNet's own tests ran from)."""
    folder = tmp_path / "trap"
    shutil.copytree(shared("camera-trap"), folder, ignore=shutil.ignore_patterns("*.md"))
    return folder


def _places(collection: Collection) -> dict[str, tuple]:
    rows = collection.store.catalog.query(
        "SELECT uri, country_code, decimal_latitude, decimal_longitude, extra FROM images "
        "WHERE status = 'live'")[1]  # fmt: skip
    return {Path(uri).name: (code, lat, lon, json.loads(extra) if extra else {})
            for uri, code, lat, lon, extra in rows}  # fmt: skip


def test_instances_json_gives_a_folder_of_photos_its_places(trap: Path, tmp_path: Path,
                                                            tiny_model: str) -> None:  # fmt: skip
    """Before: "instances.json needs a column naming the images" — the fixture the camera
    trap's photos came with could not be read."""
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as collection:
        summary = collection.index([trap], metadata=trap / "instances.json", progress=False)
        assert (summary.embedded, summary.failed) == (13, 1)  # the truncated JPEG
        places = _places(collection)
        for name, code in ELEPHANTS.items():
            assert places[name][0] == code, (name, places[name])  # ISO alpha-3 → alpha-2
        assert places["american_black_bear.jpg"][:3] == ("US", 41.46, -73.84)
        assert places["domestic_dog.jpg"][:3] == (None, 41.46, -73.84)
        assert places["ocelot.jpg"][:3] == (None, None, None)  # listed without a place
        hits = collection.search_text("elephants", k=10, where={"country_code": "KE"})
        assert [Path(h.uri).name for h in hits] == ["african_elephants.jpg"]
    # The two rows naming URLs are said, not dropped silently.
    scan = scan_paths([trap], metadata_file=str(trap / "instances.json"))
    assert any("2 of the 16 rows" in w and "picsum" in w for w in scan.warnings), scan.warnings
    assert not any("looks like" in w for w in scan.warnings)
    # Without --metadata the file beside the photos is pointed out, not passed over unsaid.
    plain = scan_paths([trap])
    assert any("instances.json looks like a SpeciesNet file" in w and "--metadata" in w
               for w in plain.warnings), plain.warnings  # fmt: skip


def _predictions(entries: list[dict]) -> dict:
    return {"predictions": [{"model_version": "4.0.1a", **e} for e in entries]}


def test_predictions_json_as_the_source(trap: Path, tmp_path: Path, tiny_model: str) -> None:
    """A predictions file names its photos by the paths the run was given; relative ones
    are found from its folder (or --media-root). Its guesses stay beside the record, never
    the photo's identification."""
    elephant = ("55631055-3e0e-4b7a-9612-dedebe9f78b0;mammalia;proboscidea;elephantidae;"
                "loxodonta;africana;african elephant")  # fmt: skip
    document = _predictions([
        {"filepath": "test_data/african_elephants.jpg", "country": "KEN",
         "prediction": elephant, "prediction_score": 0.99},
        {"filepath": "test_data/blank.jpg", "country": "USA", "admin1_region": "NY",
         "latitude": 41.46, "longitude": -73.84,
         "prediction": "f1856211-cfb7-4a5b-9158-c0f72fd09ee6;;;;;;blank",
         "prediction_score": 0.95},
        {"filepath": "test_data/ocelot.jpg", "country": "XYZ",
         "prediction": "uuid;mammalia;carnivora;felidae;;;cat family"},
        {"filepath": "test_data/missing.jpg", "failures": ["CLASSIFIER", "DETECTOR"]},
    ])  # fmt: skip
    run = tmp_path / "run"
    (run / "test_data").mkdir(parents=True)
    for name in ("african_elephants.jpg", "blank.jpg", "ocelot.jpg"):
        shutil.copy(trap / name, run / "test_data" / name)
    (run / "predictions.json").write_text(json.dumps(document, indent=2))
    store = tmp_path / "s"
    result = CliRunner().invoke(main, ["index", str(run / "predictions.json"), "--store",
                                       str(store), "--model", tiny_model, "-q"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "embedded 3" in result.output and "failed 1" in result.output
    with Collection.open(store, read_only=True) as collection:
        places = _places(collection)
    assert places["african_elephants.jpg"][0] == "KE"
    assert places["african_elephants.jpg"][3]["speciesnetPrediction"] == (
        "Loxodonta africana (african elephant)")
    assert places["blank.jpg"][:3] == ("US", 41.46, -73.84)
    assert places["blank.jpg"][3]["speciesnetPrediction"] == "blank"
    assert places["blank.jpg"][3]["admin1Region"] == "NY"
    # A code ISO does not know is kept as written, not read as a country.
    assert places["ocelot.jpg"][0] is None and places["ocelot.jpg"][3]["country"] == "XYZ"
    assert places["ocelot.jpg"][3]["speciesnetPrediction"] == "Felidae (cat family)"
    with Collection.open(store, read_only=True) as collection:
        named = collection.store.catalog.query(
            "SELECT count(*) FROM images WHERE scientific_name IS NOT NULL")[1][0][0]  # fmt: skip
        # Its scores filter as numbers (before: "extra.KEY=VALUE or extra.KEY!=VALUE").
        sure = {Path(h.uri).name for h in collection.search_text(
            "animal", k=10, where=["extra.speciesnetScore>=0.96"])}  # fmt: skip
        unsure = {Path(h.uri).name for h in collection.search_text(
            "animal", k=10, where=["extra.speciesnetScore<0.96"])}  # fmt: skip
        # A part of its prediction finds it ("elephant" in "Loxodonta africana (african
        # elephant)"); % and _ are taken as written.
        contains = {name: {Path(h.uri).name for h in collection.search_text(
            "animal", k=10, where=[condition])} for name, condition in (
            ("elephant", "extra.speciesnetPrediction~ELEPHANT"),
            ("family", "extra.speciesnetPrediction~(cat fam"),
            ("literal", "extra.speciesnetPrediction~elephant_"))}  # fmt: skip
    assert named == 0
    assert sure == {"african_elephants.jpg"}
    assert unsure == {"blank.jpg"}  # the ocelot's prediction has no score: left out
    assert contains == {"elephant": {"african_elephants.jpg"}, "family": {"ocelot.jpg"},
                        "literal": set()}  # fmt: skip


@pytest.mark.slow
def test_paths_from_another_folder_are_said_once(trap: Path, tmp_path: Path,
                                                 tiny_model: str) -> None:  # fmt: skip
    """Indexed as the source, the fixture's test_data/… paths are under no folder here:
    one warning says what to do instead of 14 failures saying only "not found"."""
    result = CliRunner().invoke(main, ["index", str(trap / "instances.json"), "--store",
                                       str(tmp_path / "s"), "--model", tiny_model])  # fmt: skip
    assert "none of the 14 files instances.json lists is under" in result.output, result.output
    assert "--media-root" in result.output and "--metadata" in result.output
    result = CliRunner().invoke(main, ["index", str(trap / "instances.json"), "--store",
                                       str(tmp_path / "s2"), "--model", tiny_model,
                                       "--media-root", str(tmp_path)])  # fmt: skip
    assert "none of the" in result.output  # still under no folder: trap/, not test_data/
    (tmp_path / "test_data").symlink_to(trap)
    result = CliRunner().invoke(main, ["index", str(trap / "instances.json"), "--store",
                                       str(tmp_path / "s3"), "--model", tiny_model,
                                       "--media-root", str(tmp_path)])  # fmt: skip
    assert "none of the" not in result.output and "embedded 13" in result.output, result.output


def test_a_row_from_elsewhere_finds_its_photo_only_by_a_name_no_other_bears(
        tmp_path: Path) -> None:  # fmt: skip
    """Rows whose paths are from another folder are paired with photos by name — unless the
    name is ambiguous among the rows or among the photos without a row."""
    from PIL import Image

    photos = tmp_path / "photos"
    for rel in ("a/one.jpg", "b/two.jpg", "c/two.jpg", "d/three.jpg", "four.jpg"):
        (photos / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(photos / rel)
    table = tmp_path / "instances.json"
    table.write_text(json.dumps({"instances": [
        {"filepath": "/mnt/cards/x/one.jpg", "country": "KEN"},   # one photo of that name
        {"filepath": "/mnt/cards/x/two.jpg", "country": "TZA"},   # two photos: left
        {"filepath": "/mnt/cards/x/three.jpg", "country": "UGA"},  # two rows: left
        {"filepath": "/mnt/cards/y/three.jpg", "country": "BWA"},
        {"filepath": "four.jpg", "country": "USA"},               # its own name: as before
    ]}))  # fmt: skip
    scan = scan_paths([photos], metadata_file=str(table))
    codes = {Path(item.uri).relative_to(photos).as_posix(): item.metadata.get("countryCode")
             for item in scan.items}  # fmt: skip
    assert codes == {"a/one.jpg": "KE", "b/two.jpg": None, "c/two.jpg": None,
                     "d/three.jpg": None, "four.jpg": "US"}  # fmt: skip
    assert any("3 of the 5 rows" in w for w in scan.warnings), scan.warnings


def test_a_json_that_is_not_speciesnet_is_one_line(tmp_path: Path, trap: Path) -> None:
    for text in ('{"images": []}', "[1, 2", '{"instances": [{"country": "KEN"}]}'):
        (tmp_path / "m.json").write_text(text)
        result = CliRunner().invoke(main, ["index", str(trap), "--store", str(tmp_path / "s"),
                                           "--metadata", str(tmp_path / "m.json")])  # fmt: skip
        assert result.exit_code != 0
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), result.output


def _coco(trap: Path) -> dict:
    """A LILA-style COCO Camera Traps file for five of the photos (paths as the dataset
    ships them, under its own folder name)."""
    images = [
        {"id": "a", "file_name": "serengeti/S1/african_elephants.jpg",
         "datetime": "2010-08-04 08:43:15", "location": "S1", "seq_id": "seq1",
         "frame_num": 1, "seq_num_frames": 2, "rights_holder": "Snapshot Serengeti"},
        {"id": "b", "file_name": "serengeti/S1/african_elephants_bw.jpg",
         "datetime": "2010-08-04 08:43:16", "location": "S1", "seq_id": "seq1",
         "frame_num": 2, "seq_num_frames": 2},
        {"id": "c", "file_name": "nacti/blank.jpg", "datetime": "Sept 25 2016 18:35",
         "location": 7},
        {"id": "d", "file_name": "nacti/domestic_cattle.jpg", "datetime": "2014-09-26T14:21:04"},
        {"id": "e", "file_name": "nacti/ocelot.jpg"},
    ]
    return {"info": {"version": "1.0", "description": "test"}, "images": images,
            "categories": [{"id": 0, "name": "empty"}, {"id": 1, "name": "elephant"},
                           {"id": 2, "name": "cattle"}, {"id": 3, "name": "dog"}],
            "annotations": [{"id": "1", "image_id": "a", "category_id": 1},
                            {"id": "2", "image_id": "a", "category_id": 1},
                            {"id": "3", "image_id": "b", "category_id": 1,
                             "sequence_level_annotation": True},
                            {"id": "4", "image_id": "c", "category_id": 0},
                            {"id": "5", "image_id": "d", "category_id": 2},
                            {"id": "6", "image_id": "d", "category_id": 3}]}  # fmt: skip


def test_a_coco_camera_traps_file_names_the_photos_beside_it(trap: Path, tmp_path: Path,
                                                             tiny_model: str) -> None:  # fmt: skip
    """LILA's datasets come as COCO Camera Traps JSON: as --metadata it gives dates,
    locations, sequences and each photo's category (before: "needs a column naming the
    images")."""
    (tmp_path / "lila.json").write_text(json.dumps(_coco(trap)))
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as collection:
        collection.index([trap], metadata=tmp_path / "lila.json", progress=False)
        rows = {Path(uri).name: (date, name, json.loads(extra) if extra else {})
                for uri, date, name, extra in collection.store.catalog.query(
                    "SELECT uri, event_date, vernacular_name, extra FROM images")[1]}  # fmt: skip
        hits = collection.search_text("elephants", k=10, where=["vernacular_name=elephant"])
    assert {Path(h.uri).name for h in hits} == {"african_elephants.jpg",
                                                "african_elephants_bw.jpg"}  # fmt: skip
    date, name, extra = rows["african_elephants.jpg"]
    assert (date, name) == ("2010-08-04T08:43:15", "elephant")
    assert extra["locationID"] == "S1" and extra["eventID"] == "seq1"
    assert rows["blank.jpg"][2]["observationType"] == "empty"
    assert rows["blank.jpg"][2]["verbatimEventDate"] == "Sept 25 2016 18:35"
    assert rows["blank.jpg"][0] == "2016-09-25T18:35:10"  # not a date: the photo's EXIF one
    assert rows["blank.jpg"][2]["locationID"] == "7"
    assert rows["domestic_cattle.jpg"][1] is None
    assert rows["domestic_cattle.jpg"][2]["observedTaxa"] == "cattle | dog"
    assert rows["ocelot.jpg"][1] is None and "locationID" not in rows["ocelot.jpg"][2]
    # As the source it lists its photos by path; here they are under no such folders.
    result = CliRunner().invoke(main, ["index", str(tmp_path / "lila.json"), "--store",
                                       str(tmp_path / "s2"), "--model", tiny_model])  # fmt: skip
    assert "none of the 5 files lila.json lists is under" in result.output, result.output


def test_cards_repeat_file_names_and_rows_find_theirs_by_path(tmp_path: Path) -> None:
    """Every camera's card starts again at IMG_0001.JPG: rows naming them by the paths the
    SpeciesNet run saw (another disk) went unpaired — the name alone is ambiguous — and
    their places were lost. The row's path now finds the photo whose path under the source
    ends it; a row naming the photo's own absolute path is its row."""
    from PIL import Image

    photos = tmp_path / "trap"
    for camera in ("cam1", "cam2", "cam3"):
        (photos / camera).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(photos / camera / "IMG_0001.JPG")
    entries = [{"filepath": "/mnt/sd/season2/trap/cam1/IMG_0001.JPG", "country": "KEN"},
               {"filepath": "D:\\season2\\trap\\cam2\\IMG_0001.JPG", "country": "TZA"},
               {"filepath": str(photos / "cam3" / "IMG_0001.JPG"), "country": "UGA"}]
    (tmp_path / "instances.json").write_text(json.dumps({"instances": entries}))
    scan = scan_paths([photos], metadata_file=str(tmp_path / "instances.json"))
    codes = {Path(item.uri).parent.name: item.metadata.get("countryCode") for item in scan.items}
    assert codes == {"cam1": "KE", "cam2": "TZ", "cam3": "UG"}
    assert not any("name no image" in w or "names no image" in w for w in scan.warnings)


@pytest.mark.slow
def test_a_large_coco_file_is_read_as_a_stream(tmp_path: Path, monkeypatch) -> None:
    """LILA's COCO files run to gigabytes: parsed whole, a million photos held 1.8 GB before
    the first was listed. Read as a stream, listing holds little more than the annotations'
    categories, whatever the order of the file's lists (here images first, categories last)
    and with a Windows byte-order mark."""
    import tracemalloc

    from bioindex.indexer import jsonlists
    from bioindex.indexer.sources import listed_media

    # The depth check before the stream reads 16 MB at a time, more than this file.
    monkeypatch.setattr(jsonlists, "_CHUNK", 1 << 16)

    n = 40_000
    document = {
        "info": {"version": "1"},
        "images": [{"id": f"i{i}", "file_name": f"S{i % 7}/img{i:06d}.JPG", "location": f"L{i % 9}",
                    "datetime": "2013-10-10 10:15:33", "seq_id": f"s{i // 3}"} for i in range(n)],
        "annotations": [{"id": f"a{i}", "image_id": f"i{i}", "category_id": i % 3}
                        for i in range(n)],
        "categories": [{"id": 0, "name": "empty"}, {"id": 1, "name": "zebra"},
                       {"id": 2, "name": "lion"}],
    }  # fmt: skip
    path = tmp_path / "big.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(document).encode())
    size = path.stat().st_size
    del document
    tracemalloc.start()
    try:
        count, names = 0, set()
        for value, metadata in listed_media(path, "coco"):
            count += 1
            names.add(metadata.get("vernacularName") or metadata.get("observationType"))
            if count == 5:
                assert value == "S4/img000004.JPG"
                assert metadata["eventDate"] == "2013-10-10T10:15:33"
                assert metadata["vernacularName"] == "zebra" and metadata["locationID"] == "L4"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == n and names == {"empty", "zebra", "lion"}
    # Parsed whole, the file's objects took about ten times its size in bytes.
    assert peak < size, (peak, size)


def test_a_speciesnet_file_is_read_as_a_stream_and_a_cut_one_is_one_line(tmp_path: Path) -> None:
    from bioindex.errors import BioindexError
    from bioindex.indexer.sources import read_table

    entries = [{"filepath": f"cam/IMG_{i:04d}.JPG", "country": "KEN", "latitude": -1.5,
                "longitude": 36.25} for i in range(300)]  # fmt: skip
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"instances": entries}))
    rows = read_table(path)
    assert len(rows) == 300
    assert rows["cam/IMG_0007.JPG"] == {"countryCode": "KE", "decimalLatitude": -1.5,
                                        "decimalLongitude": 36.25}  # fmt: skip
    assert isinstance(rows["cam/IMG_0007.JPG"]["decimalLatitude"], float)  # not a Decimal
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(BioindexError, match="cannot be read as JSON") as caught:
        read_table(path)
    assert "\n" not in str(caught.value)


def test_common_names_are_searched_as_the_catalog_s_labels(trap: Path, tmp_path: Path,
                                                           tiny_model: str) -> None:  # fmt: skip
    """A LILA dataset names its photos by common names only ("elephant"): a search for one
    gave the model's look-alikes (or, asked for catalog records, "names no taxa") while the
    catalog said which photos were elephants. Now the catalog's own come first."""
    (tmp_path / "lila.json").write_text(json.dumps(_coco(trap)))
    elephants = {"african_elephants.jpg", "african_elephants_bw.jpg"}
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as collection:
        collection.index([trap], metadata=tmp_path / "lila.json", progress=False)
        answer = collection.search(" Elephant ", k=5)
        records = collection.search_taxon("elephant", k=5, mode="catalog")
        hybrid = collection.search_taxon("elephant", k=5)
        names = collection.taxon_names()
        text = collection.search("a grey animal", k=3)
        called = collection.search_text("animal", k=10, where=["vernacular_name~EPHA"])
    assert answer.kind == "common name"
    assert {Path(h.uri).name for h in answer.hits[:2]} == elephants
    assert [h.why for h in answer.hits] == ["catalog common name"] * 2 + ["look-alike"] * 3
    assert {Path(h.uri).name for h in records} == elephants and len(records) == 2
    assert [h.why for h in hybrid][:2] == ["catalog common name"] * 2 and len(hybrid) == 5
    assert ("elephant", "common name") in names and ("cattle", "common name") not in names
    assert text.kind == "text"  # a description is still a description
    assert {Path(h.uri).name for h in called} == elephants  # ~: contains
    result = CliRunner().invoke(main, ["search", "taxon", "elephant", "-s", str(tmp_path / "s"),
                                       "--mode", "catalog", "--format", "json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert {Path(h["uri"]).name for h in json.loads(result.output)} == elephants


def test_a_store_of_common_names_classifies_against_them(trap: Path, tmp_path: Path,
                                                         tiny_model: str) -> None:  # fmt: skip
    """Before: "names no taxa to classify against", with "elephant", "ocelot" and "dog" in
    the catalog. Zero-shot now chooses between the catalog's common names (one spelling
    each), exactly as if they were given as labels; the neighbours vote for theirs."""
    (tmp_path / "m.csv").write_text("file,vernacularName\nafrican_elephants.jpg,elephant\n"
                                    "african_elephants_bw.jpg,Elephant \nocelot.jpg,ocelot\n"
                                    "african_elephants_cmyk.jpg,elephant\n"
                                    "american_black_bear.jpg,black  bear\n"
                                    "domestic_dog.jpg,dog\n")  # fmt: skip
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as collection:
        collection.index([trap], metadata=tmp_path / "m.csv", progress=False)
        got = collection.classify([trap / "blank.jpg"], k=5)
        given = collection.classify([trap / "blank.jpg"], k=5,
                                    labels=sorted({p.label for p in got}))  # fmt: skip
        voted = collection.classify([trap / "ocelot.jpg"], method="knn", k=5)
        info = collection.info()  # what a new user checks after --metadata
        bears = collection.search_taxon("Black bear", mode="catalog")  # spaces as offered
    assert (info["images_named"], info["images_common_named"]) == (0, 6)
    # The neighbour vote counts the photos called by each name: the ocelot's own is nearest.
    assert voted[0].label == "ocelot" and voted[0].decision.band == "confident"
    assert {p.label for p in voted} <= {"elephant", "ocelot", "dog", "black bear"}
    assert len(got) == 4 and {p.label for p in got} == {"elephant", "ocelot", "dog",
                                                        "black bear"}  # the spelling most use
    assert [Path(h.uri).name for h in bears] == ["american_black_bear.jpg"]
    assert all(p.taxon is None for p in got) and got[0].decision is not None
    assert {p.label: round(p.score, 6) for p in got} == {p.label: round(p.score, 6)
                                                         for p in given}  # fmt: skip
    result = CliRunner().invoke(main, ["classify", str(trap / "ocelot.jpg"), "-s",
                                       str(tmp_path / "s")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "labels: the 4 common names the catalog gives its images" in result.output
    # The page's upload asked for each rank's best name too: "custom labels have no lineage
    # to sum up to rank kingdom" (400).
    import httpx

    from bioindex.serve.app import create_app
    from tests.conftest import LiveServer

    app = create_app(tmp_path / "s", device="cpu")
    with LiveServer(app) as live:
        answer = httpx.post(f"{live.url}/api/classify", timeout=60, files={
            "file": ("o.jpg", (trap / "ocelot.jpg").read_bytes(), "image/jpeg")})  # fmt: skip
    app.state.collection.close()
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["ranks"] == {} and {p["label"].lower() for p in body["predictions"]} == {
        "elephant", "ocelot", "dog", "black bear"}  # fmt: skip


_LILA_COLUMNS = ("dataset_name,query,taxonomy_level,scientific_name,common_name,"
                 "taxonomy_string,kingdom,phylum,subphylum,superclass,class,subclass,"
                 "infraclass,superorder,order,suborder,infraorder,superfamily,family,"
                 "subfamily,tribe,genus,subgenus,species,subspecies,variety")  # fmt: skip


def _lila_row(dataset: str, query: str, level: str, name: str, ranks: dict[str, str]) -> str:
    """A row shaped as LILA's lila-taxonomy-mapping_release.csv (lowercase names)."""
    values = {"dataset_name": dataset, "query": query, "taxonomy_level": level,
              "scientific_name": name, "common_name": query if name else "",
              "taxonomy_string": f'"[(1, \'{level}\', \'{name}\', [])]"' if name else "",
              **ranks}  # fmt: skip
    return ",".join(values.get(c, "") for c in _LILA_COLUMNS.split(","))


def test_lila_taxonomy_mapping_names_a_datasets_common_names(trap: Path, tmp_path: Path,
                                                             tiny_model: str) -> None:  # fmt: skip
    """A LILA dataset calls its photos "elephant": searches by family, back-off by rank and
    exports need taxa. LILA publishes what each dataset's categories mean (its taxonomy
    mapping, lowercase, one row per dataset and category); `--names-table` reads it, and
    `--names-dataset` chooses the dataset where one category means several taxa."""
    mammal = {"kingdom": "animalia", "phylum": "chordata", "class": "mammalia"}
    rows = [_LILA_COLUMNS,
            _lila_row("Snapshot Serengeti", "elephant", "species", "loxodonta africana",
                      {**mammal, "order": "proboscidea", "family": "elephantidae",
                       "genus": "loxodonta", "species": "loxodonta africana"}),
            _lila_row("Other Trap", "elephant", "species", "elephas maximus",
                      {**mammal, "order": "proboscidea", "family": "elephantidae",
                       "genus": "elephas", "species": "elephas maximus"}),
            _lila_row("Snapshot Serengeti", "dog", "genus", "canis",
                      {**mammal, "order": "carnivora", "family": "canidae", "genus": "canis"}),
            _lila_row("Snapshot Serengeti", "empty", "", "", {})]  # fmt: skip
    (tmp_path / "mapping.csv").write_text("\n".join(rows) + "\n")
    document = _coco(trap)
    document["annotations"].append({"id": "7", "image_id": "e", "category_id": 3})  # a dog
    (tmp_path / "lila.json").write_text(json.dumps(document))
    both = CliRunner().invoke(main, ["index", str(trap), "-s", str(tmp_path / "any"), "-q",
                                     "--model", tiny_model, "--metadata",
                                     str(tmp_path / "lila.json"), "--names-table",
                                     str(tmp_path / "mapping.csv")])  # fmt: skip
    assert both.exit_code == 0, both.output
    assert "2 photos called by names" in both.output and "elephant (2)" in both.output
    assert "gives several taxa" in both.output  # which elephant: the table's datasets differ
    result = CliRunner().invoke(main, ["index", str(trap), "-s", str(tmp_path / "s"), "-q",
                                       "--model", tiny_model, "--metadata",
                                       str(tmp_path / "lila.json"), "--names-table",
                                       str(tmp_path / "mapping.csv"), "--names-dataset",
                                       "snapshot serengeti"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "named 3 photos by" in result.output, result.output
    with Collection.open(tmp_path / "s") as collection:
        rows = {Path(uri).name: rest for uri, *rest in collection.store.catalog.query(
            "SELECT uri, scientific_name, family, taxon_rank, vernacular_name FROM images "
            "WHERE status='live'")[1]}  # fmt: skip
        family = collection.search_taxon("Elephantidae", k=5, mode="catalog")
    assert rows["african_elephants.jpg"] == ["Loxodonta africana", "Elephantidae", "species",
                                             "elephant"]  # the dataset's word kept
    assert rows["ocelot.jpg"] == ["Canis", "Canidae", "genus", "dog"]  # mapped at genus
    assert rows["blank.jpg"][:3] == [None, None, None]  # "empty" names no taxon
    with Collection.open(tmp_path / "s") as collection:
        empty = collection.search("Empty", k=5)  # what a curator types in the search box
    assert empty.kind == "common name" and [Path(h.uri).name for h in empty.hits] == [
        "blank.jpg"] and empty.hits[0].why == "catalog empty frame"  # fmt: skip
    assert {Path(h.uri).name for h in family} == {"african_elephants.jpg",
                                                  "african_elephants_bw.jpg"}  # fmt: skip
    # What the catalog now names, and how many each: the check a new user makes.
    listed = CliRunner().invoke(main, ["names", "-s", str(tmp_path / "s"), "--rank", "family",
                                       "--format", "json"])  # fmt: skip
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.output) == [{"name": "Elephantidae", "rank": "family", "images": 2},
                                         {"name": "blank", "rank": "empty frames", "images": 1},
                                         {"name": "Canidae", "rank": "family", "images": 1}]
    unnamed = CliRunner().invoke(main, ["names", "-s", str(tmp_path / "any")])
    assert unnamed.exit_code == 0, unnamed.output  # the elephants' name, which no row gave
    assert "elephant  common name   2" in unnamed.output, unnamed.output
    wrong = CliRunner().invoke(main, ["index", str(trap), "-s", str(tmp_path / "w"),
                                      "--model", tiny_model, "--names-table",
                                      str(tmp_path / "mapping.csv"), "--names-dataset",
                                      "Serengeti"])  # fmt: skip
    assert wrong.exit_code == 1 and "has no rows of dataset 'Serengeti'" in wrong.output
    assert "Snapshot Serengeti" in wrong.output and len(wrong.output.splitlines()) == 1


def test_a_curators_names_table(tmp_path: Path, tiny_model: str) -> None:
    from bioindex.errors import BioindexError
    from bioindex.indexer.names_table import read_names_table

    (tmp_path / "names.csv").write_text(
        "vernacularName;scientificName;family\nZebra;Equus quagga;Equidae\n"
        "big  cat;Panthera;Felidae\nfox;;\nzebra;Equus quagga;Equidae\n")  # fmt: skip
    table = read_names_table(tmp_path / "names.csv")
    assert table.lookup("ZEBRA") == {"scientificName": "Equus quagga", "genus": "Equus",
                                     "specificEpithet": "quagga", "taxonRank": "species",
                                     "family": "Equidae"}  # fmt: skip
    assert table.lookup("big cat") == {"family": "Felidae", "scientificName": "Panthera"}
    assert table.lookup("fox") is None and not table.ambiguous
    (tmp_path / "plain.csv").write_text("name,scientificName\nzebra,Equus quagga\n")
    with pytest.raises(BioindexError, match="has no common-name column"):
        read_names_table(tmp_path / "plain.csv")
    # The Python API takes the table by its path too.
    (tmp_path / "trap.csv").write_text("file,vernacularName\nocelot.jpg,zebra\n")
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as collection:
        collection.index([shared("camera-trap", "ocelot.jpg")], metadata=tmp_path / "trap.csv",
                         names_table=tmp_path / "names.csv", progress=False)
        named = collection.store.catalog.query("SELECT scientific_name FROM images")[1]
    assert named == [("Equus quagga",)]


def test_names_on_a_plain_folder_says_how_to_name_it(tmp_path: Path, tiny_model: str) -> None:
    """The first store a new user makes names nothing: `bioindex names` says how to name
    it in one line, not classify's advice (--labels, --tol)."""
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as collection:
        collection.index([shared("camera-trap", "ocelot.jpg")], progress=False)
    said = CliRunner().invoke(main, ["names", "-s", str(tmp_path / "s")])
    assert said.exit_code == 1 and len(said.output.splitlines()) == 1, said.output
    assert "--names-from-folders or --names-table" in said.output
