"""Property-based checks (hypothesis, bounded in examples and time) over what parses input
written by other people: --where conditions, taxon names, manifests and sidecars, meta.xml.
Whatever comes in, the answer is a result or a one-line BioindexError — never another
exception, never a traceback."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bioindex.errors import BioindexError
from bioindex.indexer.dwca import Archive
from bioindex.indexer.sources import iter_table_rows
from bioindex.search.filters import parse_where
from bioindex.taxonomy import Taxonomy, make_taxon

BOUNDED = settings(max_examples=150, deadline=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
COLUMNS = ["family", "species", "event_date", "bbox", "country_code", "institution_code",
           "genus", "license", "nonsense", "ORDER"]  # fmt: skip
OPERATORS = ["=", "!=", ">=", "<=", ">", "<", "==", "=>", ""]


def _one_line_error(call) -> object:
    try:
        return call()
    except BioindexError as exc:
        assert str(exc) and "\n" not in str(exc)
        return None


@BOUNDED
@given(st.lists(st.tuples(st.sampled_from(COLUMNS), st.sampled_from(OPERATORS),
                          st.text(max_size=30)), max_size=4))  # fmt: skip
def test_where_conditions_parse_or_fail_in_one_line(parts) -> None:
    conditions = [f"{column}{op}{value}" for column, op, value in parts]
    parsed = _one_line_error(lambda: parse_where(conditions))
    if parsed is not None:
        assert parsed.sql.count("?") == len(parsed.params)  # every value is a parameter
        for value in (v for _, _, v in parts):
            if value.strip() and "'" in value:
                assert value.strip() not in parsed.sql


TAXONOMY = Taxonomy([make_taxon(["Animalia", "Chordata", "Mammalia", "Carnivora", "Felidae",
                                 "Felis", "catus"], "cat"),
                     make_taxon(["Plantae", "Tracheophyta", "Magnoliopsida", "Rosales",
                                 "Rosaceae", "Rosa", "canina"], "dog rose")])  # fmt: skip


@BOUNDED
@given(st.text(max_size=60))
def test_taxon_names_resolve_or_fail_in_one_line(name: str) -> None:
    _one_line_error(lambda: TAXONOMY.resolve(name))


@BOUNDED
@given(st.binary(max_size=400), st.sampled_from(["m.csv", "m.tsv"]))
def test_tables_read_or_fail_in_one_line(tmp_path_factory, data: bytes, name: str) -> None:
    path = Path(tmp_path_factory.mktemp("table")) / name
    path.write_bytes(b"url,scientificName\n" + data)
    _one_line_error(lambda: list(iter_table_rows(path)))


META_PARTS = st.sampled_from([
    "<core", "</core>", "<extension", "</extension>", ' rowType="x"', ' encoding="latin-9"',
    ' fieldsTerminatedBy="\\t"', ' ignoreHeaderLines="q"', "<files><location>",
    "../../etc/passwd", "occurrence.txt", "</location></files>", '<id index="7"/>',
    '<field index="1" term="http://rs.tdwg.org/dwc/terms/scientificName"/>', ">",
    '<!DOCTYPE a [<!ENTITY e "x">]>', "&e;", "<archive>", "</archive>",
])  # fmt: skip


@BOUNDED
@given(st.lists(META_PARTS, max_size=14), st.text(alphabet=string.printable, max_size=80))
def test_meta_xml_opens_or_fails_in_one_line(tmp_path_factory, parts, rows) -> None:
    folder = Path(tmp_path_factory.mktemp("dwca"))
    (folder / "meta.xml").write_text('<?xml version="1.0"?>' + "".join(parts))
    (folder / "occurrence.txt").write_text(rows)

    def read() -> list:
        with Archive(folder) as archive:
            return list(archive.occurrences())

    _one_line_error(read)


def _laughs(levels: int = 9) -> str:
    """The billion laughs: each entity ten of the one before, 10^9 characters in all."""
    entities = ['<!ENTITY e0 "lol">'] + [
        f'<!ENTITY e{i} "{f"&e{i - 1};" * 10}">' for i in range(1, levels + 1)]
    return (f'<!DOCTYPE a [{"".join(entities)}]><archive><core rowType="&e{levels};">'
            f"<files><location>o.txt</location></files></core></archive>")


@pytest.mark.parametrize("bomb", [
    _laughs(),
    '<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><archive><core rowType="&x;">'
    '<files><location>o.txt</location></files></core></archive>',
])  # fmt: skip
def test_entity_expansion_and_external_entities_are_refused(tmp_path, bomb: str) -> None:
    (tmp_path / "meta.xml").write_text(bomb)
    (tmp_path / "o.txt").write_text("1\n")
    with pytest.raises(BioindexError) as caught, Archive(tmp_path):
        pass
    assert "\n" not in str(caught.value)
