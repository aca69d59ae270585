"""What goes into the catalog: image records, failures, and Darwin Core columns.

Rows reach DuckDB as a dict of NumPy arrays (its NumPy scan), not as an Arrow table:
pyarrow's first array imports pandas when that is installed, 0.25-0.5 s that the last
commit of every run waited for (apache/arrow#34994).
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bioindex.taxonomy import RANK_COLUMNS, split_binomial

RANKS = RANK_COLUMNS  # the catalog's rank columns (kept under this name for callers)

DWC_TEXT_COLUMNS = (
    "occurrence_id", "catalog_number", "institution_code", "collection_code",
    "basis_of_record", "scientific_name", "taxon_rank", *RANK_COLUMNS, "vernacular_name",
    "country_code", "event_date", "recorded_by", "license", "rights_holder", "creator",
)  # fmt: skip
DWC_FLOAT_COLUMNS = ("decimal_latitude", "decimal_longitude")
DWC_COLUMNS = DWC_TEXT_COLUMNS + DWC_FLOAT_COLUMNS
# Columns a metadata update may change; everything else belongs to the embedded file.
METADATA_COLUMNS = (*DWC_COLUMNS, "extra")

IMAGE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("image_id", "BIGINT"), ("uri", "VARCHAR"), ("status", "VARCHAR"), ("size", "BIGINT"),
    ("mtime", "DOUBLE"), ("sha256", "VARCHAR"), ("width", "INTEGER"), ("height", "INTEGER"),
    ("shard", "VARCHAR"), ("shard_row", "INTEGER"), ("run_id", "INTEGER"),
    ("indexed_at", "TIMESTAMP"),
    *((c, "VARCHAR") for c in DWC_TEXT_COLUMNS), *((c, "DOUBLE") for c in DWC_FLOAT_COLUMNS),
    ("extra", "VARCHAR"),
)  # fmt: skip
FAILURE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("uri", "VARCHAR"), ("stage", "VARCHAR"), ("error", "VARCHAR"), ("run_id", "INTEGER"),
    ("failed_at", "TIMESTAMP"), ("size", "BIGINT"), ("mtime", "DOUBLE"),
)  # fmt: skip
OCCURRENCE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("core_id", "VARCHAR"), ("source", "VARCHAR"),
    *((c, "VARCHAR") for c in DWC_TEXT_COLUMNS), *((c, "DOUBLE") for c in DWC_FLOAT_COLUMNS),
    ("extra", "VARCHAR"),
)  # fmt: skip


@dataclass(frozen=True)
class ImageRecord:
    """One embedded image on its way into the catalog."""

    uri: str
    size: int | None
    mtime: float | None
    sha256: str | None
    width: int | None
    height: int | None
    metadata: dict[str, Any]
    # What the photo's EXIF says (images.photo_facts), under the metadata when written.
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Failure:
    uri: str
    stage: str
    error: str
    size: int | None = None
    mtime: float | None = None


@functools.lru_cache(maxsize=4096)
def dwc_column(term: str) -> str:
    """catalogNumber, dwc:catalogNumber, catalog_number, CatalogNumber → catalog_number."""
    term = term.strip()
    term = term.rsplit("/", 1)[-1]  # full IRIs: http://rs.tdwg.org/dwc/terms/catalogNumber
    term = term.split(":", 1)[-1]
    term = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", term)
    return re.sub(r"[^0-9a-zA-Z]+", "_", term).strip("_").lower()


# The columns a photo's own EXIF may fill (images.photo_facts).
PHOTO_FACT_COLUMNS = ("event_date", "decimal_latitude", "decimal_longitude")
# The columns that name an image's taxon: new metadata naming any of them replaces them all,
# as a family left from an earlier identification could contradict the new name.
TAXON_COLUMNS = ("scientific_name", "taxon_rank", *RANK_COLUMNS, "vernacular_name")
PLACE_COLUMNS = ("decimal_latitude", "decimal_longitude")
PLACE_VERBATIM = ("verbatimLatitude", "verbatimLongitude")  # split_metadata's, in extra


def named_columns(metadatas: Sequence[dict[str, Any]]) -> tuple[set[str], set[str]]:
    """(catalog columns, extra keys) that rows of new metadata speak for: the keys any of
    them has, blank or not (a table's header: a blank cell clears), widened to every taxon
    column where they name one and to the whole place where they name a coordinate. Taken
    over all the rows, not row by row: a source of whole records (a COCO listing, a Camtrap
    DP package) leaves out the fields a record lacks, and a photo whose animal was struck
    off must lose its name."""
    keys = set().union(*metadatas) if metadatas else set()
    columns = {dwc_column(key) for key in keys} & set(DWC_COLUMNS)
    extra = {key for key in keys if dwc_column(key) not in DWC_COLUMNS}
    if columns & set(TAXON_COLUMNS):
        columns |= set(TAXON_COLUMNS)
    if columns & set(PLACE_COLUMNS):
        columns |= set(PLACE_COLUMNS)
        extra |= set(PLACE_VERBATIM)
    return columns, extra


def keep_unnamed(columns: dict[str, np.ndarray], named: tuple[set[str], set[str]],
                 stored: dict[str, list[Any]]) -> dict[str, np.ndarray]:  # fmt: skip
    """`columns` (darwin_core_columns of new metadata, one row per image) with what the
    metadata does not name (`named`: named_columns) kept as `stored` (the images' rows
    now, METADATA_COLUMNS): a --metadata file of places alone erased every name an
    earlier file gave, and one of names every country."""
    said, keys = named
    out = dict(columns)
    for name in DWC_COLUMNS:
        # A date or place may be the photo's own: Store._keep_photo_facts decides those.
        if name not in said and name not in PHOTO_FACT_COLUMNS:
            out[name] = (numbers(stored[name]) if name in DWC_FLOAT_COLUMNS
                         else texts(stored[name]))  # fmt: skip
    merged = []
    for new, old in zip(columns["extra"], stored["extra"]):
        kept = {k: v for k, v in (json.loads(old) if old else {}).items() if k not in keys}
        both = {**kept, **(json.loads(new) if new else {})}
        merged.append(json.dumps(both, default=str, sort_keys=True) if both else None)
    out["extra"] = texts(merged)
    return out


def with_photo_facts(metadata: dict[str, Any], facts: dict[str, Any]) -> dict[str, Any]:
    """An image's metadata with what its photo says (EXIF date and place) where the
    metadata (a --metadata row, an archive's record), in whatever spelling, says nothing.
    Not for a photo of a specimen: its EXIF says when and where it was imaged, which is
    not when and where the specimen was collected (Darwin Core's eventDate)."""
    if not facts or is_specimen(metadata.get(_term(metadata, "basis_of_record"))):
        return metadata
    given = {dwc_column(key) for key, value in metadata.items() if value not in (None, "")}
    extra = {key: value for key, value in facts.items() if dwc_column(key) not in given}
    if "decimal_latitude" in given or "decimal_longitude" in given:  # a place is one pair
        extra.pop("decimalLatitude", None)
        extra.pop("decimalLongitude", None)
    return {**metadata, **extra} if extra else metadata


def without_photo_facts(row: dict[str, Any], facts: dict[str, Any]) -> dict[str, Any]:
    """A stored row (Darwin Core columns) less the date and the place that equal what its
    photo says (`facts`, as photo_facts gives them); a place goes as one pair."""
    kept = dict(row)
    if "eventDate" in facts and kept.get("event_date") == facts["eventDate"]:
        del kept["event_date"]
    place = ("decimal_latitude", "decimal_longitude")
    said = (facts.get("decimalLatitude"), facts.get("decimalLongitude"))
    if None not in said and all(_same_degree(kept.get(name), value)
                                for name, value in zip(place, said)):  # fmt: skip
        for name in place:
            del kept[name]
    return kept


def _same_degree(stored: Any, said: float) -> bool:
    return isinstance(stored, float) and math.isclose(stored, said, rel_tol=0.0, abs_tol=1e-9)


def is_specimen(basis_of_record: Any) -> bool:
    """Whether a basisOfRecord names a specimen or sample (PreservedSpecimen,
    PRESERVED_SPECIMEN, MaterialSample, …) rather than an observation."""
    kind = re.sub(r"[^a-z]", "", str(basis_of_record or "").lower())
    return kind.endswith("specimen") or kind in ("materialsample", "materialcitation")


def _term(metadata: dict[str, Any], column: str) -> str | None:
    """The key of `metadata` that spells Darwin Core's `column`, if any."""
    return next((key for key in metadata if dwc_column(key) == column), None)


def split_metadata(metadata: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Darwin Core columns the catalog knows, and everything else (for `extra`)."""
    known: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in metadata.items():
        if value is None or (isinstance(value, str) and value == ""):
            continue
        column = dwc_column(key)
        if column in DWC_COLUMNS:
            known[column] = value
        else:
            extra[key] = value
    for column, verbatim, bound in _COORDINATES:
        number = _float(known.get(column))
        if column in known and (number is None or not abs(number) <= bound):
            # "45°N", "91": kept as written under the Darwin Core term for that, not read
            # as a place (GBIF flags such coordinates invalid or out of range likewise).
            extra.setdefault(verbatim, known.pop(column))
    return fill_ranks(known), extra


_COORDINATES = (("decimal_latitude", "verbatimLatitude", 90.0),
                ("decimal_longitude", "verbatimLongitude", 180.0))


def fill_ranks(known: dict[str, Any]) -> dict[str, Any]:
    """Genus and specific epithet from a binomial scientificName when those columns are
    empty. Nothing above genus is ever filled: a name alone does not say its family.

    A specificEpithet that holds the whole binomial keeps only its epithet: GBIF's
    occurrence downloads of 2013 (shared/fixtures/dwca/gbif-results.zip) wrote the backbone's
    species ("Tetraodon fluviatilis") under that term, and the species read as "Tetraodon
    Tetraodon fluviatilis"."""
    epithet = split_binomial(str(known.get("specific_epithet", "")))
    if epithet and known.get("genus", epithet[0]) == epithet[0]:
        known["genus"], known["specific_epithet"] = epithet
    binomial = split_binomial(str(known.get("scientific_name", "")))
    if binomial and not known.get("genus") and not known.get("specific_epithet"):
        known["genus"], known["specific_epithet"] = binomial
    return known


def darwin_core_columns(metadatas: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Catalog columns (Darwin Core + `extra` JSON) for rows of free-form metadata."""
    split = [split_metadata(metadata) for metadata in metadatas]
    # Most columns of most chunks are empty (a folder of photos has no metadata at all):
    # those are filled whole rather than looked up row by row.
    present = set().union(*(known for known, _ in split))
    empty = np.full(len(split), None, dtype=object)
    columns: dict[str, np.ndarray] = {}
    for column in DWC_TEXT_COLUMNS:
        columns[column] = (texts([_text(known.get(column)) for known, _ in split])
                           if column in present else empty)  # fmt: skip
    for column in DWC_FLOAT_COLUMNS:
        columns[column] = (numbers([_float(known.get(column)) for known, _ in split])
                           if column in present else np.full(len(split), np.nan))  # fmt: skip
    columns["extra"] = texts([json.dumps(extra, default=str, sort_keys=True) if extra else None
                              for _, extra in split])  # fmt: skip
    return columns


def image_columns(records: Sequence[ImageRecord], ids: Sequence[int], shard: str | None,
                  run_id: int | None) -> dict[str, np.ndarray]:  # fmt: skip
    n = len(records)
    table = {
        "image_id": np.asarray(ids, dtype=np.int64),
        "uri": texts([r.uri for r in records]),
        "status": texts(["live"] * n),
        "size": numbers([r.size for r in records]),
        "mtime": numbers([r.mtime for r in records]),
        "sha256": texts([r.sha256 for r in records]),
        "width": numbers([r.width for r in records]),
        "height": numbers([r.height for r in records]),
        "shard": texts([shard] * n),
        "shard_row": np.arange(n, dtype=np.int64),
        "run_id": numbers([run_id] * n),
    }
    table.update(darwin_core_columns([with_photo_facts(r.metadata, r.facts) for r in records]))
    return table


def failure_columns(failures: Sequence[Failure], run_id: int | None) -> dict[str, np.ndarray]:
    return {
        "uri": texts([f.uri for f in failures]),
        "stage": texts([f.stage for f in failures]),
        "error": texts([f.error for f in failures]),
        "run_id": numbers([run_id] * len(failures)),
        "size": numbers([f.size for f in failures]),
        "mtime": numbers([f.mtime for f in failures]),
    }


def texts(values: Sequence[str | None]) -> np.ndarray:
    """Text column: str and None in an object array, which the scan reads as VARCHAR."""
    column = np.empty(len(values), dtype=object)
    column[:] = list(values)
    return column


def numbers(values: Sequence[float | None]) -> np.ndarray:
    """Numeric column, None as NaN, which the scan reads as NULL; the INSERT casts it to the
    column's type (integers are exact below 2**53). Typed, because the scan would guess an
    object column's type from a sample of its rows."""
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _float(value: Any) -> float | None:
    """A coordinate as a number; "-1,2916" too, with the decimal comma of the tables Excel
    writes in much of Europe (their fields split by semicolons)."""
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        if isinstance(value, str) and _DECIMAL_COMMA.match(value.strip()):
            return float(value.strip().replace(",", "."))
        return None


_DECIMAL_COMMA = re.compile(r"^[+-]?\d+,\d+$")
