"""Property-based checks (hypothesis, bounded in examples and time) over what parses input
written by other people: --where conditions, taxon names, manifests and sidecars, meta.xml.
Whatever comes in, the answer is a result or a one-line BioindexError — never another
exception, never a traceback."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bioindex.errors import BioindexError
from bioindex.indexer.dwca import Archive
from bioindex.indexer.sources import iter_table_rows, read_table
from bioindex.search.filters import parse_where
from bioindex.taxonomy import Taxonomy, make_taxon
from tests.conftest import shared

BOUNDED = settings(max_examples=150, deadline=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
COLUMNS = ["family", "species", "event_date", "bbox", "country_code", "institution_code",
           "genus", "license", "nonsense", "ORDER", "extra.locationID", "extra.", "extra.a'b",
           'extra.x"; DROP TABLE images; --']  # fmt: skip
OPERATORS = ["=", "!=", ">=", "<=", ">", "<", "~", "==", "=>", "~~", ""]


def _one_line_error(call) -> object:
    try:
        return call()
    except BioindexError as exc:
        assert str(exc) and "\n" not in str(exc)
        return None


@BOUNDED
@given(st.lists(st.tuples(st.sampled_from(COLUMNS), st.sampled_from(OPERATORS),
                          st.text(max_size=30)), max_size=4))  # fmt: skip
@example([("family", "~", "'")])  # a quote the SQL's own ESCAPE '\' clause holds
def test_where_conditions_parse_or_fail_in_one_line(parts) -> None:
    conditions = [f"{column}{op}{value}" for column, op, value in parts]
    parsed = _one_line_error(lambda: parse_where(conditions))
    if parsed is not None:
        assert parsed.sql.count("?") == len(parsed.params)  # every value is a parameter
        # The statement's own quoted text is no value of the user's: a value of one quote
        # was "found" in the SQL it was kept out of (a CI run drew it).
        sql = parsed.sql.replace("ESCAPE '\\'", "")
        for value in (v for _, _, v in parts):
            if value.strip() and "'" in value:
                assert value.strip() not in sql


TAXONOMY = Taxonomy([make_taxon(["Animalia", "Chordata", "Mammalia", "Carnivora", "Felidae",
                                 "Felis", "catus"], "cat"),
                     make_taxon(["Plantae", "Tracheophyta", "Magnoliopsida", "Rosales",
                                 "Rosaceae", "Rosa", "canina"], "dog rose")])  # fmt: skip


@BOUNDED
@given(st.text(max_size=60))
def test_taxon_names_resolve_or_fail_in_one_line(name: str) -> None:
    _one_line_error(lambda: TAXONOMY.resolve(name))


@BOUNDED
@example(b"a.jpg,Panthera leo,one too many\n", "m.csv")  # a traceback from the sidecar
@example(b"a.jpg\tPanthera leo\t\t\n", "m.tsv")
@given(st.binary(max_size=400), st.sampled_from(["m.csv", "m.tsv"]))
def test_tables_read_or_fail_in_one_line(tmp_path_factory, data: bytes, name: str) -> None:
    path = Path(tmp_path_factory.mktemp("table")) / name
    separator = b"\t" if name.endswith(".tsv") else b","
    path.write_bytes(b"url" + separator + b"scientificName\n" + data)
    _one_line_error(lambda: list(iter_table_rows(path)))
    _one_line_error(lambda: read_table(path))  # as --metadata: keyed by its file column


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=12) | st.sampled_from(["KEN", "usa", "XX", "a;b;c;d;e;f;g", ";;;;;;blank"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["filepath", "country", "latitude", "longitude", "prediction",
                         "admin1_region", "prediction_score", "x", "file_name", "datetime",
                         "location", "id", "image_id", "category_id", "name", "seq_id"]),
        inner, max_size=5),
    max_leaves=12)  # fmt: skip


@BOUNDED
@example("images", [{"id": [1], "file_name": "a.jpg"}],
         [{"id": [2], "image_id": [1], "category_id": {"x": 1}, "name": "n"}], b"")
@given(st.sampled_from(["instances", "predictions", "images", "nothing"]), JSON_VALUES,
       JSON_VALUES, st.binary(max_size=20))  # fmt: skip
def test_camera_trap_json_reads_or_fails_in_one_line(tmp_path_factory, key: str, entries,
                                                     other, tail: bytes) -> None:  # fmt: skip
    """SpeciesNet's instances and predictions, COCO Camera Traps (images, annotations,
    categories), damaged or not."""
    import json

    path = Path(tmp_path_factory.mktemp("speciesnet")) / "instances.json"
    text = json.dumps({key: entries if isinstance(entries, list) else [entries],
                       "annotations": other, "categories": other}).encode()
    path.write_bytes(text if not tail else text[: len(text) // 2] + tail)
    _one_line_error(lambda: read_table(path))


CAMTRAP_TABLES = {
    "deployments": b"deploymentID,latitude,longitude\nd1,-1.29,36.82\n",
    "media": b"mediaID,deploymentID,timestamp,filePath,fileMediatype\n"
             b"m1,d1,2010-08-04T08:43:15+03:00,media/a.jpg,image/jpeg\n",
    "observations": b"observationID,deploymentID,mediaID,eventStart,eventEnd,observationLevel,"
                    b"observationType,scientificName\n"
                    b"e1,d1,,2010-08-04T05:43:00Z,2010-08-04T05:44:00Z,event,animal,Panthera leo\n",
}  # fmt: skip


@BOUNDED
@given(st.sampled_from(sorted(CAMTRAP_TABLES)), st.binary(max_size=80),
       st.sampled_from(["list", "null", "string", "outside"]))  # fmt: skip
def test_a_camtrap_package_reads_or_fails_in_one_line(tmp_path_factory, table: str, noise: bytes,
                                                      resources: str) -> None:  # fmt: skip
    """A damaged table or descriptor of a Camera Trap Data Package."""
    import json

    from bioindex.indexer.sources import scan_paths

    folder = Path(tmp_path_factory.mktemp("camtrap"))
    listed = [{"name": n, "path": f"{n}.csv"} for n in CAMTRAP_TABLES]
    if resources == "outside":
        listed[0]["path"] = "../../deployments.csv"
    descriptor = {"profile": "https://example.org/camtrap-dp/1.0/camtrap-dp-profile.json",
                  "resources": {"list": listed, "null": None, "string": "media.csv",
                                "outside": listed}[resources],
                  "licenses": "CC0", "contributors": [None, {"role": "rightsHolder"}]}  # fmt: skip
    (folder / "datapackage.json").write_text(json.dumps(descriptor))
    for name, text in CAMTRAP_TABLES.items():
        (folder / f"{name}.csv").write_bytes(text[: len(text) // 2] + noise if name == table
                                             else text)  # fmt: skip
    _one_line_error(lambda: scan_paths([folder]))


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


def _small_zip() -> bytes:
    import io
    import zipfile

    from PIL import Image

    picture = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(picture, "PNG")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zipped:  # dated, so that its bytes are the same each run
        zipped.writestr(zipfile.ZipInfo("a/one.png", (2020, 1, 1, 0, 0, 0)),
                        picture.getvalue(), compress_type=zipfile.ZIP_DEFLATED)  # fmt: skip
        zipped.writestr(zipfile.ZipInfo("two.png", (2020, 1, 1, 0, 0, 0)),
                        picture.getvalue(), compress_type=zipfile.ZIP_STORED)  # fmt: skip
    return out.getvalue()


SMALL_ZIP = _small_zip()


@BOUNDED
@given(st.lists(st.tuples(st.integers(0, len(SMALL_ZIP) - 1), st.integers(0, 255)),
                min_size=1, max_size=6))  # fmt: skip
@example([(239, 71), (286, 153), (181, 242), (212, 111), (244, 250)])  # "zip file version"
@example([(121, 41), (234, 58), (272, 249)])  # a member's name that is not UTF-8
def test_a_damaged_zip_of_photos_lists_or_fails_in_one_line(tmp_path_factory, flips) -> None:
    """Bytes of a zip of photos changed anywhere: it is listed or refused in one line, and
    each member read gives at most the bytes its zip declares or an OSError. (zipfile
    raised NotImplementedError and UnicodeDecodeError through it: the examples.)"""
    from bioindex.indexer.sources import zip_photos

    data = bytearray(SMALL_ZIP)
    for at, value in flips:
        data[at] = value
    path = tmp_path_factory.mktemp("zip") / "photos.zip"
    path.write_bytes(bytes(data))
    listed = _one_line_error(lambda: zip_photos(path))
    for item in (listed or ([], []))[0]:
        try:
            assert len(item.read_bytes()) == item.size
        except OSError as exc:
            assert "\n" not in str(exc)


DWCA_DAMAGE = [
    [(1165, 32), (522, 60)],  # Bad CRC-32 (BadZipFile) while reading occurrence.txt
    [(62, 11), (52, 4), (780, 110)],  # deflate data that does not inflate (zlib.error)
    [(1259, 201), (1325, 87), (345, 116)],  # "strong encryption" (NotImplementedError)
    [(34, 231)],  # meta.xml's local name not UTF-8 (UnicodeDecodeError)
    [(266, 40), (947, 155), (29, 18)],  # EOFError
    [(939, 193), (1366, 147)],  # a member marked encrypted (RuntimeError)
    [(148, 89), (1436, 193)],  # a seek before the file's start (OSError)
]


@pytest.mark.parametrize("flips", DWCA_DAMAGE)
def test_a_damaged_darwin_core_archive_fails_in_one_line(tmp_path, flips) -> None:
    """Each of these changed bytes of a real archive ended in a traceback of zipfile's."""
    data = bytearray(shared("dwca", "dwca-simple-test-archive.zip").read_bytes())
    for at, value in flips:
        data[at] = value
    (tmp_path / "x.zip").write_bytes(bytes(data))

    def read_all() -> int:
        with Archive(tmp_path / "x.zip") as archive:
            return sum(1 for _ in archive.occurrences())

    _one_line_error(read_all)


def _depth(value) -> int:
    if isinstance(value, (list, dict)):
        inner = value.values() if isinstance(value, dict) else value
        return 1 + max((_depth(v) for v in inner), default=0)
    return 0


TRICKY_TEXT = st.text(alphabet='[]{}"\\ab', max_size=8)
NESTED = st.recursive(st.none() | st.integers() | TRICKY_TEXT,
                      lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(TRICKY_TEXT, inner, max_size=3),
                      max_leaves=20)  # fmt: skip


@BOUNDED
@given(NESTED, st.sampled_from([1, 2, 3, 5, 64]), st.booleans())
def test_json_nesting_depth_counts_brackets_outside_strings(value, chunk: int,
                                                           indent: bool) -> None:  # fmt: skip
    """The depth guard in front of the streamed camera-trap JSON: brackets, quotes and
    backslashes inside strings, and chunk edges anywhere, never change the count."""
    import io
    import json

    from bioindex.indexer.jsonlists import nesting_depth

    text = json.dumps(value, indent=1 if indent else None).encode()
    assert nesting_depth(io.BytesIO(text), chunk) == _depth(value)


@pytest.mark.parametrize("kind", ["coco", "coco-metadata", "camtrap-dp", "iiif"])
def test_deeply_nested_json_is_one_line(tmp_path: Path, kind: str) -> None:
    """A stranger's JSON nested 20,000 deep: streamed, ijson held a prefix per level (1 GB
    from a 40 KB file; 200,000 levels had the process killed); parsed whole, a traceback
    (RecursionError)."""
    import tracemalloc

    from bioindex.indexer.sources import scan_paths

    deep, brackets = 20_000, "[" * 20_000 + "]" * 20_000
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"")
    documents = {
        "coco": ("lila.json", '{"images": [{"file_name": "a.jpg", "x": ' + brackets + "}]}"),
        "coco-metadata": ("lila.json", '{"images": ["]", ' + '["]",' * deep + "]" * deep + "]}"),
        "camtrap-dp": ("datapackage.json", '{"profile": "camtrap-dp", "resources": ' + brackets
                       + "}"),
        "iiif": ("manifest.json", '{"@context": "http://iiif.io/api/presentation/3/context.json",'
                 ' "items": ' + brackets + "}"),
    }  # fmt: skip
    name, text = documents[kind]
    folder = tmp_path / "package" if kind == "camtrap-dp" else tmp_path
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(text)
    tracemalloc.start()
    try:
        if kind == "coco-metadata":
            _one_line_error(lambda: scan_paths([photos], metadata_file=str(tmp_path / name)))
        else:
            _one_line_error(lambda: scan_paths([tmp_path / name if kind != "camtrap-dp"
                                                else folder]))  # fmt: skip
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, peak
