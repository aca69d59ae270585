"""Metadata has a life of its own: added, corrected and cleared without re-embedding."""

from __future__ import annotations

import shutil
from pathlib import Path

from bioindex.collection import Collection
from tests.conftest import draw_images


def _sidecar(path: Path, photos: Path, family: dict[str, str]) -> Path:
    files = sorted(p.relative_to(photos).as_posix() for p in photos.rglob("*.*"))
    rows = [f"{f},{family.get(f, 'Felidae')},Felis catus,Animalia,Chordata,Mammalia,Carnivora\n"
            for f in files]  # fmt: skip
    path.write_text("file,family,scientificName,kingdom,phylum,class,order\n" + "".join(rows))
    return path


def test_metadata_added_then_corrected_without_re_embedding(tmp_path: Path,
                                                            tiny_model: str) -> None:
    photos = tmp_path / "photos"
    draw_images(photos, 12, seed=8)
    store = tmp_path / "s"
    with Collection.open(store, model=tiny_model, create=True) as col:
        bare = col.index([photos], progress=False, workers=0)
        assert bare.embedded == 12
        ids = {r["uri"]: r["image_id"] for r in col.store.rows(col.store.catalog.live_ids())
               .values()}  # fmt: skip
        sidecar = _sidecar(tmp_path / "meta.csv", photos, {})
        added = col.index([photos], metadata=sidecar, progress=False, workers=0)
        assert (added.embedded, added.unchanged, added.updated) == (0, 12, 12)
        hits = col.search_taxon("Felidae", k=12, mode="catalog")
        assert len(hits) == 12 and all(h.why == "catalog family" for h in hits)
        first = sorted(p.relative_to(photos).as_posix() for p in photos.rglob("*.*"))[0]
        _sidecar(sidecar, photos, {first: "Canidae"})
        edited = col.index([photos], metadata=sidecar, progress=False, workers=0)
        assert (edited.embedded, edited.updated) == (0, 1)
        row = col.store.rows([ids[str(photos / first)]])[ids[str(photos / first)]]
        assert row["family"] == "Canidae" and row["scientific_name"] == "Felis catus"
        kept = col.index([photos], progress=False, workers=0)  # no --metadata: nothing cleared
        assert (kept.embedded, kept.updated) == (0, 0)
        assert len(col.search_taxon("Felidae", k=20, mode="catalog")) == 11
        now = {r["uri"]: r["image_id"] for r in col.store.rows(col.store.catalog.live_ids())
               .values()}  # fmt: skip
        assert now == ids  # same images, same ids: nothing was re-embedded
        assert col.store.runs()[-1]["sources"] == [str(photos.resolve())]


def test_a_fixed_failure_leaves_the_failures_list(tmp_path: Path, tiny_model: str) -> None:
    photos = tmp_path / "photos"
    good = draw_images(photos, 3, seed=9)
    broken = photos / "broken.jpg"
    broken.write_bytes(b"not a jpeg at all")
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as col:
        first = col.index([photos], progress=False, workers=0)
        assert (first.embedded, first.failed) == (3, 1)
        assert [f["uri"] for f in col.failures()] == [str(broken)]
        shutil.copy(good[0], broken)  # fixed
        second = col.index([photos], progress=False, workers=0)
        assert (second.embedded, second.failed) == (1, 0)
        assert col.failures() == []
        broken.unlink()  # a failed file that vanished leaves the list too
        (photos / "bad2.png").write_bytes(b"broken")
        col.index([photos], progress=False, workers=0)
        (photos / "bad2.png").unlink()
        col.index([photos], progress=False, workers=0)
        assert col.failures() == []


def test_taxon_search_on_a_plain_folder_asks_the_model(tmp_path: Path, tiny_model: str) -> None:
    """A store with no labels (the first one a user makes) still answers a taxon name: from
    its BioCLIP caption, every hit marked as a look-alike; the catalog mode says why not."""
    import pytest
    from click.testing import CliRunner

    from bioindex.cli import main
    from bioindex.errors import BioindexError

    photos = tmp_path / "photos"
    draw_images(photos, 10, seed=3)
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as col:
        col.index([photos], progress=False, workers=0)
        hits = col.search_taxon("Felis catus", k=4)
        assert [h.why for h in hits] == ["look-alike"] * 4
        same = col.search_text("a photo of Felis catus.", k=4)
        assert [h.image_id for h in hits] == [h.image_id for h in same]
        with pytest.raises(BioindexError, match="names no taxa"):
            col.search_taxon("Felis catus", k=4, mode="catalog")
    result = CliRunner().invoke(main, ["search", "taxon", "Felidae", "-s", str(tmp_path / "s"),
                                       "--format", "json"])  # fmt: skip
    assert result.exit_code == 0, result.output


def test_a_file_of_other_columns_keeps_what_an_earlier_one_gave(tmp_path: Path,
                                                                tiny_model: str) -> None:
    """A --metadata file speaks for its own columns only: one of places alone erased every
    name an earlier file gave (and one of names, every country and field of its own)."""
    photos = tmp_path / "photos"
    first = sorted(draw_images(photos, 3, seed=12))[0].name
    store = tmp_path / "s"

    def index_with(header: str, row: str) -> dict:
        table = tmp_path / "meta.csv"
        table.write_text(f"file,{header}\n{first},{row}\n")
        with Collection.open(store, model=tiny_model, create=True) as col:
            col.index([photos], metadata=table, progress=False, workers=0)
            found = col.store.catalog.query(
                "SELECT scientific_name, family, genus, country_code, extra FROM images "
                "WHERE uri LIKE ?", [f"%{first}"])  # fmt: skip
        return dict(zip(found[0], found[1][0]))

    named = index_with("scientificName,family,notes", "Felis catus,Felidae,shelf 4")
    assert (named["scientific_name"], named["family"]) == ("Felis catus", "Felidae")
    placed = index_with("countryCode", "KE")
    assert (placed["scientific_name"], placed["family"], placed["country_code"]) == (
        "Felis catus", "Felidae", "KE")  # fmt: skip
    assert placed["extra"] == '{"notes": "shelf 4"}'
    # A new name replaces the whole lineage: the earlier family could contradict it.
    renamed = index_with("scientificName", "Canis lupus")
    assert (renamed["scientific_name"], renamed["genus"], renamed["family"]) == (
        "Canis lupus", "Canis", None)  # fmt: skip
    assert renamed["country_code"] == "KE" and renamed["extra"] == '{"notes": "shelf 4"}'
    cleared = index_with("countryCode,notes", ",")  # a blank cell clears
    assert cleared["country_code"] is None and cleared["extra"] is None
    assert cleared["scientific_name"] == "Canis lupus"


def test_a_record_that_lost_its_name_loses_it_from_a_source_of_whole_records(
        tmp_path: Path) -> None:  # fmt: skip
    """Sources of whole records (a COCO listing, a Camtrap DP package) leave out what a
    record lacks: a photo whose animal was struck off while others kept theirs is named
    no more, where a file naming no animal at all keeps every name."""
    from bioindex.store import Store
    from tests.test_store import MODEL, _records, _unit

    with Store.create(tmp_path / "s", MODEL) as store:
        store.commit(_records(["a", "b"], vernacularName="zebra", locationID="L0"), _unit(2))
        assert store.update_metadata([("/x/a", {"vernacularName": "zebra", "locationID": "L1"}),
                                      ("/x/b", {"locationID": "L2"})]) == 2  # fmt: skip
        rows = store.rows(store.catalog.live_ids())
        names = {r["uri"]: (r.get("vernacular_name"), r.get("extra")) for r in rows.values()}
        assert names == {"/x/a": ("zebra", {"locationID": "L1"}),
                         "/x/b": (None, {"locationID": "L2"})}  # fmt: skip
        store.update_metadata([("/x/a", {"countryCode": "KE"}), ("/x/b", {"countryCode": "TZ"})])
        rows = store.rows(store.catalog.live_ids())
        assert {r["uri"]: (r.get("vernacular_name"), r.get("country_code"))
                for r in rows.values()} == {"/x/a": ("zebra", "KE"), "/x/b": (None, "TZ")}
