"""Filters, taxon resolution, query arithmetic and duplicates on real stores."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bioindex import Collection
from bioindex.cli import main
from bioindex.errors import BioindexError
from bioindex.search import query
from bioindex.search.filters import parse_where
from bioindex.search.query import nearest_many
from bioindex.store import ImageRecord, Store
from bioindex.taxonomy import Taxonomy, make_taxon
from tests.conftest import draw_images

DIM = 16
MODEL = {
    "name": "test",
    "source": "test",
    "weights_sha256": "1" * 64,
    "dim": DIM,
    "image_size": 224,
    "mean": [0.5] * 3,
    "std": [0.5] * 3,
    "preprocess": "eval",
}


@pytest.fixture(scope="module")
def big_store(tmp_path_factory: pytest.TempPathFactory):
    """20,000 rows: 0.1% in AQ, 90% in BR, 3 rows in ZZ, the rest in KE."""
    path = tmp_path_factory.mktemp("big") / "s"
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(20_000, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    countries = np.array(["KE"] * 20_000, dtype=object)
    order = rng.permutation(20_000)
    countries[order[:20]] = "AQ"
    countries[order[20:18_020]] = "BR"
    countries[order[18_020:18_023]] = "ZZ"
    latitudes = rng.uniform(-90, 90, 20_000).round(4)
    longitudes = rng.uniform(-180, 180, 20_000).round(4)
    with Store.create(path, MODEL) as store:
        store.index()
        for start in range(0, 20_000, 5_000):
            records = [
                ImageRecord(f"/img/{i}.jpg", 1, 1.0, f"sha{i}", 8, 8, {
                    "countryCode": countries[i], "eventDate": f"{1990 + i % 30}-01-01",
                    "decimalLatitude": latitudes[i], "decimalLongitude": longitudes[i],
                    "institutionCode": "O'Brien; DROP TABLE images;--" if i == 7 else "MUS"})
                for i in range(start, start + 5_000)
            ]  # fmt: skip
            store.commit(records, vectors[start : start + 5_000])
        store.save_index()
    return path, vectors, countries


def _truth(vectors, mask, query, k):
    scores = vectors @ query
    scores[~mask] = -np.inf
    top = np.argsort(-scores)[:k]
    return [int(i) + 1 for i in top if np.isfinite(scores[i])]  # image_id = row + 1


@pytest.mark.parametrize("country, expected", [("AQ", 10), ("BR", 10), ("ZZ", 3)])
def test_filters_return_exactly_k_correct_rows(big_store, country, expected) -> None:
    path, vectors, countries = big_store
    rng = np.random.default_rng(1)
    with Collection.open(path, read_only=True) as col:
        for _ in range(5):
            query = rng.normal(size=DIM).astype(np.float32)
            query /= np.linalg.norm(query)
            hits = col.search_vector(query, k=10, where=[f"country_code={country}"])
            assert len(hits) == expected
            assert [h.image_id for h in hits] == _truth(vectors, countries == country, query, 10)
            assert all(h.metadata["country_code"] == country for h in hits)


@pytest.mark.parametrize("country, k, broad", [("AQ", 10, False), ("BR", 10, False),
                                               ("ZZ", 10, False), ("KE", 10, False),
                                               (None, 10, False), ("KE", 1, True)])
def test_queries_searched_together_get_what_each_gets_alone(
        big_store, country, k, broad, monkeypatch) -> None:  # fmt: skip
    """nearest_many (the neighbour vote's batch) against exact answers and nearest() one
    query at a time: selective filters (AQ, ZZ, KE), a broad one (BR), none; and KE taken
    as broad for k = 1, where the batch's over-fetch (about 2 matches a query) leaves some
    queries short, to be asked again. Each query with its own exclusions."""
    path, vectors, countries = big_store
    if broad:
        monkeypatch.setattr(query, "SELECTIVE_MIN", 0)
        monkeypatch.setattr(query, "SELECTIVE_SHARE", 0.0)
    rng = np.random.default_rng(3)
    queries = vectors[rng.choice(len(vectors), 40, replace=False)]
    mask = np.ones(len(vectors), bool) if country is None else countries == country
    where = None if country is None else parse_where([f"country_code={country}"])
    with Store.open(path, read_only=True) as store:
        stored = store.vectors(list(range(1, len(vectors) + 1))).astype(np.float32)
        excludes = [set(_truth(stored, mask, q, 3)[j % 3:j % 3 + 1 + j % 2]) if j % 4 else set()
                    for j, q in enumerate(queries)]  # fmt: skip
        searches, search = [], store.search
        monkeypatch.setattr(store, "search",
                            lambda *a, **kw: searches.append(a) or search(*a, **kw))
        together = nearest_many(store, queries, k, excludes, where)
        assert len(searches) > 1 if broad else len(searches) == 1
        for vector, exclude, found in zip(queries, excludes, together):
            alone = query.nearest(store, vector, k, exclude, where)
            assert [i for _, i in found] == [i for _, i in alone]
            np.testing.assert_allclose([s for s, _ in found], [s for s, _ in alone], atol=1e-6)
            kept = mask.copy()
            kept[[i - 1 for i in exclude]] = False
            assert [i for _, i in found] == _truth(stored, kept, vector, k)


def test_combined_conditions_and_dates(big_store) -> None:
    path, vectors, countries = big_store
    query = vectors[5]
    with Collection.open(path, read_only=True) as col:
        hits = col.search_vector(query, k=10, where=["country_code=BR", "event_date>=2015",
                                                      "event_date<2017"])  # fmt: skip
        rows = col.store.rows([h.image_id for h in hits])
        years = {rows[h.image_id]["event_date"][:4] for h in hits}
        assert len(hits) == 10 and years <= {"2015", "2016"}
        boxed = col.search_vector(query, k=5, where=["bbox=-10,-5,10,5"])
        rows = col.store.rows([h.image_id for h in boxed])
        assert len(boxed) == 5
        assert all(-5 <= r["decimal_latitude"] <= 5 and -10 <= r["decimal_longitude"] <= 10
                   for r in rows.values())  # fmt: skip


def test_injection_is_matched_literally(big_store) -> None:
    path, vectors, _ = big_store
    with Collection.open(path, read_only=True) as col:
        hits = col.search_vector(
            vectors[0], k=5, where=["institution_code=O'Brien; DROP TABLE images;--"]
        )
        assert [h.image_id for h in hits] == [8]
        assert col.store.live_count() == 20_000


@pytest.mark.parametrize("bad, message", [
    ("country_code", "malformed filter"),
    ("colour=red", "unknown filter column"),
    ("country_code>=KE", "works on event_date and extra.KEY only"),
    ("bbox=1,2,3", "four numbers"),
    ("bbox=0,10,5,-10", "latitudes"),
    ("family=", "malformed filter"),
])  # fmt: skip
def test_malformed_filters(bad: str, message: str) -> None:
    with pytest.raises(BioindexError, match=message):
        parse_where([bad])


def test_cli_filter_errors_are_one_line(big_store) -> None:
    path, _, _ = big_store
    result = CliRunner().invoke(main, ["search", "id", "1", "-s", str(path), "-w", "nope=1"])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "unknown filter column" in result.output


TAXA = [
    make_taxon(["Animalia", "Chordata", "Mammalia", "Carnivora", "Felidae", "Panthera", "leo"],
               "lion"),
    make_taxon(["Animalia", "Chordata", "Mammalia", "Carnivora", "Felidae", "Felis", "catus"],
               "domestic cat"),
    make_taxon(["Animalia", "Arthropoda", "Insecta", "Lepidoptera", "Pieridae", "Morus", "alba"],
               ""),
    make_taxon(["Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Moraceae", "Morus",
                "alba"], "white mulberry"),
    make_taxon(["Animalia", "Chordata", "", "Squamata", "Lacertidae", "Podarcis", "muralis"],
               ""),
]  # fmt: skip


@pytest.mark.parametrize("name, rank, last", [
    ("Panthera leo", "species", "leo"), ("lion", "species", "leo"),
    ("felidae", "family", "Felidae"), ("Animalia Chordata Mammalia", "class", "Mammalia"),
    ("Chordata Mammalia", "class", "Mammalia"), ("white mulberry", "species", "alba"),
    ("Squamata", "order", "Squamata"), ("a photo of Carnivora.", "order", "Carnivora"),
])  # fmt: skip
def test_name_resolution(name: str, rank: str, last: str) -> None:
    taxon = Taxonomy(TAXA).resolve(name)
    assert taxon.rank == rank and taxon.lineage[-1] == last


def test_ambiguous_and_unknown_names() -> None:
    taxonomy = Taxonomy(TAXA)
    with pytest.raises(BioindexError, match="ambiguous taxon 'Morus'") as info:
        taxonomy.resolve("Morus")
    assert "Plantae" in str(info.value) and "Arthropoda" in str(info.value)
    with pytest.raises(BioindexError, match="ambiguous"):
        taxonomy.resolve("Morus alba")
    assert taxonomy.resolve("Moraceae Morus alba").kingdom == "Plantae"
    with pytest.raises(BioindexError, match="did you mean felidae"):
        taxonomy.resolve("Felidea")
    assert (
        make_taxon(TAXA[4].lineage).text() == "Animalia Chordata Squamata Lacertidae "
        "Podarcis muralis"
    )


def test_taxonomy_from_csv(tmp_path: Path) -> None:
    path = tmp_path / "taxa.csv"
    path.write_text("kingdom,phylum,class,order,family,genus,species,common_name\n"
                    "Animalia,Chordata,Aves,Passeriformes,Cardinalidae,Cardinalis,"
                    "Cardinalis cardinalis,northern cardinal\n")  # fmt: skip
    taxon = Taxonomy.from_csv(path).resolve("northern cardinal")
    assert taxon.caption() == ("a photo of Animalia Chordata Aves Passeriformes Cardinalidae "
                               "Cardinalis cardinalis.")  # fmt: skip


def test_duplicates_exact_and_near(tmp_path: Path, tiny_model: str) -> None:
    photos = tmp_path / "p"
    paths = draw_images(photos, 12, seed=21)
    shutil.copy(paths[0], photos / "copy.jpg" if paths[0].suffix == ".jpg" else photos / "c.png")
    from PIL import Image

    near = Image.open(paths[1]).convert("RGB")
    near = near.resize((near.width - 2, near.height - 2))
    near.save(photos / "near.png")
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as col:
        col.index([photos], progress=False)
        groups = col.duplicates(threshold=0.99)
        by_group: dict[int, set[str]] = {}
        for member in groups:
            by_group.setdefault(member.group, set()).add(Path(member.uri).name)
        names = {frozenset(v) for v in by_group.values()}
        assert frozenset({paths[0].name, "c.png" if paths[0].suffix == ".png" else
                          "copy.jpg"}) in names  # fmt: skip
        assert any(paths[1].name in g and "near.png" in g for g in names)
        pair = {m.kind: m.score for m in groups
                if Path(m.uri).name in ("copy.jpg", "c.png", paths[0].name)}  # fmt: skip
        assert pair == {"anchor": None, "exact": 1.0}
    result = CliRunner().invoke(
        main, ["dedup", "-s", str(tmp_path / "s"), "--format", "json", "-t", "0.99"]
    )
    assert result.exit_code == 0 and '"kind": "exact"' in result.output


def test_query_arithmetic_moves_towards_added_image(tmp_path: Path, tiny_model: str) -> None:
    photos = tmp_path / "p"
    paths = draw_images(photos, 30, seed=4)
    with Collection.open(tmp_path / "s", model=tiny_model, create=True) as col:
        col.index([photos], progress=False)
        plain = col.search_query([str(paths[3])], k=1)[0]
        assert plain.uri == str(paths[3].resolve())
        # Subtracting the image itself (twice as strongly) must push it off the top.
        pushed = col.search_query([str(paths[3])], [f"2:{paths[3]}"], k=3)
        assert str(paths[3].resolve()) not in [h.uri for h in pushed]
        mixed = col.search_query([str(paths[3]), f"20:{paths[8]}"], k=1)[0]
        assert mixed.uri == str(paths[8].resolve())
        with pytest.raises(BioindexError, match="zero"):
            col.search_query([str(paths[3])], [str(paths[3])], k=1)


def test_a_cosine_is_never_shown_above_one(big_store) -> None:
    """Vectors are stored as float16, whose rounding can leave a norm a hair over 1: a
    picture searched for itself scored 1.00003, which no cosine is."""
    path, vectors, _ = big_store
    with Collection.open(path) as collection:
        scores = [collection.search_vector(v, k=1)[0].score for v in vectors[:300]]
        where = [collection.search_vector(v, k=1, where="country_code=BR")[0].score
                 for v in vectors[:300]]  # fmt: skip
    assert max(scores + where) <= 1.0
    assert min(scores) > 0.999  # each found itself


def test_one_condition_may_be_given_as_a_plain_string(big_store) -> None:
    """where="country_code=AQ" in Python was read character by character ('malformed
    filter 'c'')."""
    path, vectors, countries = big_store
    with Collection.open(path) as collection:
        hits = collection.search_vector(vectors[0], k=50, where="country_code=AQ")
        mapped = collection.search_vector(vectors[0], k=50, where={"country_code": "AQ"})
    assert len(hits) == 20 and {h.metadata["country_code"] for h in hits} == {"AQ"}
    assert [h.image_id for h in mapped] == [h.image_id for h in hits]  # was: keys only
