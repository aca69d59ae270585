"""Camera Trap Data Packages (Camtrap DP 1.0): a camera-trap platform's export indexed as it
is — photos from the media table, places from the deployments, names from the observations."""

from __future__ import annotations

import csv
import json
import shutil
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from bioindex import Collection
from bioindex.cli import main
from tests.conftest import shared

PROFILE = "https://raw.githubusercontent.com/tdwg/camtrap-dp/1.0.2/camtrap-dp-profile.json"
MEDIA = ["mediaID", "deploymentID", "captureMethod", "timestamp", "filePath", "filePublic",
         "fileName", "fileMediatype"]  # fmt: skip
OBSERVATIONS = ["observationID", "deploymentID", "mediaID", "eventID", "eventStart", "eventEnd",
                "observationLevel", "observationType", "scientificName", "count",
                "classificationMethod", "classifiedBy", "classificationProbability"]  # fmt: skip


def _write(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(rows)


@pytest.fixture()
def package(tmp_path: Path) -> Path:
    """Two deployments, six photos and a video, observed per photo and per sequence, by
    people and by a machine."""
    folder = tmp_path / "mica"
    (folder / "media").mkdir(parents=True)
    photos = {"m1": "african_elephants.jpg", "m2": "african_elephants_bw.jpg",
              "m3": "ocelot.jpg", "m4": "domestic_dog.jpg", "m5": "blank.jpg",
              "m6": "domestic_cattle.jpg"}  # fmt: skip
    for name in photos.values():
        shutil.copy(shared("camera-trap", name), folder / "media" / name)
    (folder / "media" / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    (folder / "datapackage.json").write_text(json.dumps({
        "profile": PROFILE, "name": "trap-sample",
        "resources": [{"name": n, "path": f"{n}.csv", "profile": "tabular-data-resource"}
                      for n in ("deployments", "media", "observations")],
        "licenses": [{"name": "CC0-1.0", "scope": "data"},
                     {"path": "http://creativecommons.org/licenses/by/4.0/", "scope": "media"}],
        "contributors": [{"title": "Kenya Wildlife Service", "role": "rightsHolder"}],
    }))  # fmt: skip
    _write(folder / "deployments.csv",
           ["deploymentID", "locationID", "locationName", "latitude", "longitude",
            "coordinateUncertainty", "deploymentStart", "deploymentEnd"],
           [["d1", "L1", "Nairobi gate", -1.29, 36.82, 50, "2010-08-01T00:00:00Z",
             "2010-09-01T00:00:00Z"],
            ["d2", "L2", "Hudson ridge", 41.46, -73.84, 30, "2017-07-01T00:00:00Z",
             "2017-08-01T00:00:00Z"]])  # fmt: skip
    times = {"m1": "2010-08-04T08:43:15+03:00", "m2": "2010-08-04T08:43:20+03:00",
             "m3": "2017-07-13T12:00:00-04:00", "m4": "2017-07-13T12:09:23-04:00",
             "m5": "2017-07-13T13:00:00-04:00", "m6": "2017-07-13T14:00:00-04:00"}  # fmt: skip
    rows = [[m, "d1" if m in ("m1", "m2") else "d2", "activityDetection", times[m],
             f"media/{name}", "true", name, "image/jpeg"] for m, name in photos.items()]
    rows.append(["v1", "d2", "activityDetection", "2017-07-13T15:00:00-04:00",
                 "media/clip.mp4", "true", "clip.mp4", "video/mp4"])  # fmt: skip
    _write(folder / "media.csv", MEDIA, rows)
    _write(folder / "observations.csv", OBSERVATIONS, [
        # A sequence at d1 seen by a person (05:43:00-05:44:00 UTC holds m1 and m2) ...
        ["e1", "d1", "", "s1", "2010-08-04T05:43:00Z", "2010-08-04T05:44:00Z", "event",
         "animal", "Loxodonta africana", 5, "human", "A. Ranger", ""],
        # ... and m2 on its own: its own observation wins.
        ["o2", "d1", "m2", "s1", "2010-08-04T05:43:20Z", "2010-08-04T05:43:20Z", "media",
         "animal", "Loxodonta africana", 3, "human", "B. Curator", ""],
        ["o3", "d2", "m3", "s2", "2017-07-13T16:00:00Z", "2017-07-13T16:00:00Z", "media",
         "animal", "Leopardus pardalis", 1, "", "", ""],
        # m4: a machine's guess on the photo, a person's word on its sequence.
        ["o4", "d2", "m4", "s3", "2017-07-13T16:09:23Z", "2017-07-13T16:09:23Z", "media",
         "animal", "Canis familiaris", 1, "machine", "model v1", 0.91],
        ["e3", "d2", "", "s3", "2017-07-13T16:09:00Z", "2017-07-13T16:10:00Z", "event",
         "animal", "Canis lupus", 1, "human", "A. Ranger", ""],
        ["o5", "d2", "m5", "s4", "2017-07-13T17:00:00Z", "2017-07-13T17:00:00Z", "media",
         "blank", "", "", "human", "A. Ranger", ""],
        ["o6a", "d2", "m6", "s5", "2017-07-13T18:00:00Z", "2017-07-13T18:00:00Z", "media",
         "animal", "Bos taurus", 2, "human", "A. Ranger", ""],
        ["o6b", "d2", "m6", "s5", "2017-07-13T18:00:00Z", "2017-07-13T18:00:00Z", "media",
         "animal", "Canis familiaris", 1, "human", "A. Ranger", ""],
    ])  # fmt: skip
    return folder


def _rows(store: Path) -> dict[str, dict]:
    with Collection.open(store, read_only=True) as collection:
        columns, rows = collection.store.catalog.query(
            "SELECT uri, scientific_name, genus, event_date, decimal_latitude, "
            "decimal_longitude, basis_of_record, license, rights_holder, occurrence_id, extra "
            "FROM images WHERE status = 'live'")  # fmt: skip
    found = {}
    for row in rows:
        record = dict(zip(columns, row))
        record["extra"] = json.loads(record["extra"] or "{}")
        found[Path(record.pop("uri")).name] = record
    return found


def test_a_camtrap_dp_folder_is_indexed_with_its_places_and_names(
        package: Path, tmp_path: Path, tiny_model: str) -> None:  # fmt: skip
    """Before: the folder was read as a folder of photos — its tables, the places and every
    name a person gave, were passed over."""
    store = tmp_path / "s"
    result = CliRunner().invoke(main, ["index", str(package), "--store", str(store),
                                       "--model", tiny_model, "-q"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "embedded 6" in result.output and "failed 0" in result.output
    assert "left out 1 files" in result.output and "video" in result.output  # the clip
    rows = _rows(store)
    elephant, alone = rows["african_elephants.jpg"], rows["african_elephants_bw.jpg"]
    assert elephant["scientific_name"] == "Loxodonta africana"  # from its sequence
    assert elephant["genus"] == "Loxodonta"
    assert elephant["event_date"] == "2010-08-04T08:43:15+03:00"
    assert (elephant["decimal_latitude"], elephant["decimal_longitude"]) == (-1.29, 36.82)
    assert elephant["basis_of_record"] == "MachineObservation"
    assert elephant["license"] == "http://creativecommons.org/licenses/by/4.0/"
    assert elephant["rights_holder"] == "Kenya Wildlife Service"
    assert (elephant["extra"]["locationID"], elephant["extra"]["locality"]) == ("L1",
                                                                           "Nairobi gate")
    assert elephant["occurrence_id"] == "e1" and elephant["extra"]["identifiedBy"] == "A. Ranger"
    assert alone["occurrence_id"] == "o2" and alone["extra"]["individualCount"] == "3"
    assert rows["ocelot.jpg"]["scientific_name"] == "Leopardus pardalis"  # method unsaid
    dog = rows["domestic_dog.jpg"]
    assert dog["scientific_name"] == "Canis lupus"  # a person's, not the machine's
    assert dog["extra"]["machineIdentification"] == "Canis familiaris (0.91)"
    blank = rows["blank.jpg"]
    assert blank["scientific_name"] is None and blank["extra"]["observationType"] == "blank"
    both = rows["domestic_cattle.jpg"]
    assert both["scientific_name"] is None  # two taxa: neither is the photo's name
    assert both["extra"]["observedTaxa"] == "Bos taurus | Canis familiaris"
    with Collection.open(store, read_only=True) as collection:
        hits = collection.search_text("an elephant", k=10, where={"genus": "Loxodonta"})
        assert {Path(h.uri).name for h in hits} == {"african_elephants.jpg",
                                                    "african_elephants_bw.jpg"}  # fmt: skip
        # What the catalog keeps beside its columns is a filter too (before: "unknown
        # filter column").
        for where, names in (("extra.locationID=l1", {"african_elephants.jpg",
                                                       "african_elephants_bw.jpg"}),
                             ("extra.observationType=blank", {"blank.jpg"}),
                             ("extra.locationID!=L1", {"ocelot.jpg", "domestic_dog.jpg",
                                                       "blank.jpg", "domestic_cattle.jpg"})):
            hits = collection.search_text("an animal", k=10, where=[where])
            assert {Path(h.uri).name for h in hits} == names, where
    # Handed on as a Darwin Core Archive: the fields Darwin Core has go under its terms,
    # the package's own (mediaID, a machine's guess) stay home. Before, every camelCase key
    # became a Darwin Core term: dwc:mediaID, dwc:machineIdentification.
    with Collection.open(store, read_only=True) as collection:
        collection.export(tmp_path / "out.zip")
    with zipfile.ZipFile(tmp_path / "out.zip") as archive:
        meta = archive.read("meta.xml").decode()
    dwc = "http://rs.tdwg.org/dwc/terms/"
    for term in ("locationID", "locality", "coordinateUncertaintyInMeters", "identifiedBy",
                 "individualCount", "basisOfRecord"):
        assert f'"{dwc}{term}"' in meta, term
    for key in ("mediaID", "deploymentID", "machineIdentification", "observedTaxa",
                "observationType"):
        assert key not in meta, key
    # The descriptor itself names the package too; a rerun has nothing to do.
    again = CliRunner().invoke(main, ["index", str(package / "datapackage.json"), "--store",
                                      str(store), "-q"])  # fmt: skip
    assert "embedded 0, unchanged 6" in again.output, again.output


def test_a_zipped_package_and_a_broken_one_are_one_line(package: Path, tmp_path: Path,
                                                        tiny_model: str) -> None:  # fmt: skip
    zipped = tmp_path / "mica.zip"
    with zipfile.ZipFile(zipped, "w") as out:
        for file in package.rglob("*"):
            out.write(file, file.relative_to(package))
    descriptor = json.loads((package / "datapackage.json").read_text())
    cases = [(zipped, "unzip it and index its folder")]
    broken = tmp_path / "broken"
    shutil.copytree(package, broken)
    descriptor["resources"] = descriptor["resources"][:1]
    (broken / "datapackage.json").write_text(json.dumps(descriptor))
    cases.append((broken, "names no media, observations table"))
    for source, said in cases:
        result = CliRunner().invoke(main, ["index", str(source), "--store",
                                           str(tmp_path / "s"), "--model", tiny_model])  # fmt: skip
        assert result.exit_code != 0
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and said in lines[0], result.output
