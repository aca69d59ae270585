"""`--where` conditions → a parameterised SQL predicate over the catalog.

    family=Felidae              a rank (kingdom … genus), case-insensitive
    species=Felis catus         the binomial (scientific_name, or genus + specific_epithet)
    institution_code=FMNH       any Darwin Core text column; != for "not"
    event_date>=2010-01-01      ISO dates (or prefixes: 2010, 2010-06) with =, !=, >=, <=, >, <
    bbox=W,S,E,N                decimal_longitude/decimal_latitude inside the box
    folder=site3                images under a folder of that name (or path: site3/cam2),
                                at any depth; a camera trap's site, a plain folder's parts
    extra.locationID=L1         a field the catalog keeps beside its columns (a metadata
                                file's own column, a Camtrap DP's locationID or
                                observationType, SpeciesNet's speciesnetPrediction);
                                case-insensitive, = or != (!= keeps rows without it)
    extra.speciesnetScore>=0.9  the same, as a number, with >=, <=, >, < (rows whose value
                                is not a number are left out)
    vernacular_name~zebra       contains (case-insensitive), on a text column, a rank, species
                                or extra.KEY: extra.speciesnetPrediction~elephant

Conditions are ANDed. Column names come from a fixed list and values are always bound as
parameters, so no part of a value ever becomes SQL.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bioindex.errors import BioindexError
from bioindex.store import DWC_TEXT_COLUMNS, RANKS
from bioindex.taxonomy import Taxon, common_name_key

_CONDITION = re.compile(r"^\s*(extra\.[^=!<>~]+?|[A-Za-z_:]+)\s*(!=|>=|<=|=|>|<|~)\s*(.*?)\s*$")
EXTRA = "extra."
_ORDERED_COLUMNS = ("event_date",)
_DATE = re.compile(r"^\d{4}(-\d{2}(-\d{2})?)?$")
_RANK_NAMES = tuple(r for r in RANKS if r != "specific_epithet")
_OTHER_COLUMNS = ("species", "bbox", "folder")


@dataclass
class Filter:
    """A parsed AND of conditions: `sql` has one `?` per entry of `params`."""

    conditions: list[str] = field(default_factory=list)
    sql: str = "TRUE"
    params: list[Any] = field(default_factory=list)
    # Whether `sql` names what only an image has (its path): not for occurrence records.
    images_only: bool = False

    def __bool__(self) -> bool:
        return bool(self.conditions)


def _column(name: str) -> str:
    from bioindex.store import dwc_column

    column = dwc_column(name)
    if column in _RANK_NAMES or column in DWC_TEXT_COLUMNS or column in _OTHER_COLUMNS:
        return column
    known = ", ".join(sorted({*_RANK_NAMES, *DWC_TEXT_COLUMNS, *_OTHER_COLUMNS}))
    raise BioindexError(f"unknown filter column {name!r}; use one of: {known}, or "
                        f"extra.KEY for a field kept beside them")  # fmt: skip


def parse_where(conditions: str | Sequence[str] | Mapping[str, Any] | None) -> Filter:
    """Parse `--where` strings (one condition may come as a plain string, and equalities as
    a mapping, {"country_code": "KE"}); raise BioindexError for anything malformed."""
    if isinstance(conditions, str):  # else its characters would be read as conditions
        conditions = [conditions]
    elif isinstance(conditions, Mapping):  # else only its keys would be read
        conditions = [f"{column}={value}" for column, value in conditions.items()]
    result = Filter()
    clauses: list[str] = []
    for text in conditions or ():
        match = _CONDITION.match(text)
        if not match or not match.group(3):
            raise BioindexError(
                f"malformed filter {text!r}: expected COLUMN=VALUE, COLUMN!=VALUE, "
                f"COLUMN~TEXT (contains), event_date>=DATE or bbox=W,S,E,N"
            )
        name, op, value = match.groups()
        if value[0] in "=<>!~":
            raise BioindexError(f"filter {text!r}: unknown operator {op + value[0]!r}; use "
                                f"=, !=, ~ (contains), or >=, <=, >, < on event_date and "
                                f"extra.KEY")  # fmt: skip
        if name.startswith(EXTRA):
            clauses.append(_extra(text, name[len(EXTRA):].strip(), op, value, result.params))
            result.conditions.append(text)
            continue
        column = _column(name)
        if column == "bbox":
            clauses.append(_bbox(text, op, value, result.params))
        elif column == "folder":
            clauses.append(_folder(text, op, value, result.params))
            result.images_only = True
        elif column in _ORDERED_COLUMNS and op == "~":
            raise BioindexError(f"filter {text!r}: ~ (contains) is for text; dates take =, !=, "
                                f">=, <=, >, <")  # fmt: skip
        elif column in _ORDERED_COLUMNS:
            clauses.append(_date(text, column, op, value, result.params))
        elif op in (">=", "<=", ">", "<"):
            raise BioindexError(f"filter {text!r}: {op} works on event_date and extra.KEY only")
        elif op == "~" and column == "species":
            clauses.append(r"(lower(scientific_name) LIKE lower(?) ESCAPE '\' OR "
                           r"lower(concat_ws(' ', genus, specific_epithet)) LIKE lower(?) "
                           r"ESCAPE '\')")  # fmt: skip
            result.params.extend([_containing(value)] * 2)
        elif op == "~":
            clauses.append(f'lower("{column}") LIKE lower(?) ' + r"ESCAPE '\'")
            result.params.append(_containing(value))
        elif column == "species":
            negate = "NOT " if op == "!=" else ""
            clauses.append(
                f"{negate}(lower(scientific_name) = lower(?) OR "
                f"lower(concat_ws(' ', genus, specific_epithet)) = lower(?))"
            )
            result.params.extend([value, value])
        else:
            sql_op = "=" if op == "=" else "<>"
            clauses.append(f'lower("{column}") {sql_op} lower(?)')
            result.params.append(value)
        result.conditions.append(text)
    if clauses:
        result.sql = " AND ".join(f"({c})" for c in clauses)
    return result


def _date(text: str, column: str, op: str, value: str, params: list[Any]) -> str:
    """ISO dates compare correctly as text; a prefix (2010, 2010-06) stands for its whole
    period, so `<= 2010` includes 2010-12-31 and `= 2010-06` all of June."""
    if not _DATE.match(value) or not _real_date(value):
        raise BioindexError(f"filter {text!r}: {value!r} is not a date (YYYY, YYYY-MM or "
                            f"YYYY-MM-DD)")  # fmt: skip
    end = value + "\x7f"  # sorts after every date the prefix starts
    if op in ("=", "!="):
        params.extend([value, end])
        inside = f'"{column}" >= ? AND "{column}" < ?'
        return inside if op == "=" else f'NOT ({inside})'
    params.append(end if op in ("<=", ">") else value)
    return f'"{column}" {"<" if op == "<=" else ">=" if op == ">" else op} ?'


def _folder(text: str, op: str, value: str, params: list[Any]) -> str:
    """Images with a folder of that name (or that run of folders) anywhere in their path,
    a zip's or tar's own folders included; case-insensitive, as a person types it."""
    parts = [part for part in re.split(r"[/\\]", value) if part]
    if op not in ("=", "!=") or not parts or any(part in (".", "..") for part in parts):
        raise BioindexError(f"filter {text!r}: folder=NAME or folder=NAME/NAME (= or !=)")
    escaped = "/".join(parts).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    params.append(f"%/{escaped.lower()}/%")
    inside = (r"lower('/' || replace(replace(uri, '\', '/'), '#', '/')) LIKE ? ESCAPE '\'")
    return inside if op == "=" else f"NOT ({inside})"


def _extra(text: str, key: str, op: str, value: str, params: list[Any]) -> str:
    """A key of the `extra` JSON column: = and != compare text, case-insensitive; the order
    operators compare numbers (a SpeciesNet score, a frame number), as text would put "10"
    before "9"."""
    if not key:
        raise BioindexError(f"filter {text!r}: extra.KEY=VALUE or extra.KEY!=VALUE")
    path = '$."' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if op in (">=", "<=", ">", "<"):
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise BioindexError(f"filter {text!r}: {op} compares numbers; {value!r} is not one")
        params.extend([path, number])
        return f"TRY_CAST(json_extract_string(extra, ?) AS DOUBLE) {op} ?"
    if op == "~":
        params.extend([path, _containing(value)])
        return r"lower(json_extract_string(extra, ?)) LIKE lower(?) ESCAPE '\'"
    params.extend([path, value])
    if op == "=":
        return "lower(json_extract_string(extra, ?)) = lower(?)"
    return "coalesce(lower(json_extract_string(extra, ?)), '') <> lower(?)"


def _containing(value: str) -> str:
    """A LIKE pattern for text containing `value` (its own % and _ taken literally)."""
    return "%" + value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _real_date(value: str) -> bool:
    parts = [int(p) for p in value.split("-")]
    try:
        datetime.date(parts[0], *(parts[1:] + [1] * (3 - len(parts))))
    except ValueError:
        return False
    return True


def _bbox(text: str, op: str, value: str, params: list[Any]) -> str:
    try:
        west, south, east, north = (float(v) for v in value.split(","))
    except ValueError:
        raise BioindexError(f"filter {text!r}: bbox needs four numbers W,S,E,N") from None
    if op != "=" or not (-180 <= west <= 180 and -180 <= east <= 180):
        raise BioindexError(f"filter {text!r}: bbox=W,S,E,N with longitudes in [-180, 180]")
    if not (-90 <= south <= north <= 90):
        raise BioindexError(f"filter {text!r}: latitudes must satisfy -90 <= S <= N <= 90")
    params.extend([south, north])
    if west <= east:
        params.extend([west, east])
        return "decimal_latitude BETWEEN ? AND ? AND decimal_longitude BETWEEN ? AND ?"
    # A box across the antimeridian (W > E) is two longitude ranges.
    params.extend([west, east])
    return "decimal_latitude BETWEEN ? AND ? AND (decimal_longitude >= ? OR decimal_longitude <= ?)"


def and_filters(*filters: Filter | None) -> Filter:
    present = [f for f in filters if f]
    if not present:
        return Filter()
    return Filter(
        conditions=[c for f in present for c in f.conditions],
        sql=" AND ".join(f"({f.sql})" for f in present),
        params=[p for f in present for p in f.params],
        images_only=any(f.images_only for f in present),
    )


def taxon_filter(taxon: Taxon) -> Filter:
    """Catalog rows labelled as `taxon`: its own rank must match; a higher rank that the row
    fills in must agree (so a genus name shared by a plant and an animal is told apart)."""
    clauses: list[str] = []
    params: list[Any] = []
    rank_columns = ("kingdom", "phylum", '"class"', '"order"', "family", "genus")
    names = taxon.lineage
    if taxon.rank == "species":
        binomial = f"{taxon.genus} {taxon.epithet}"
        clauses.append(
            "(lower(concat_ws(' ', genus, specific_epithet)) = lower(?) OR "
            "lower(scientific_name) = lower(?) OR lower(scientific_name) LIKE lower(?))"
        )
        params.extend([binomial, binomial, binomial + " %"])
        higher = names[:5]
    else:
        own = rank_columns[len(names) - 1]
        clauses.append(f"lower({own}) = lower(?)")
        params.append(names[-1])
        higher = names[:-1]
    for column, name in zip(rank_columns, higher):
        if name:
            clauses.append(f"({column} IS NULL OR lower({column}) = lower(?))")
            params.append(name)
    return Filter([f"{taxon.rank}={taxon.scientific_name}"], " AND ".join(clauses), params)


BLANK = "blank"  # the class a camera trap's empty frames are learnt as (search.fewshot)
# The SQL of taxonomy.common_name_key: case and runs of spaces aside.
_COMMON_NAME_SQL = r"lower(regexp_replace(trim(vernacular_name), '\s+', ' ', 'g'))"


def common_name_filter(name: str) -> Filter:
    """Catalog rows whose common name is `name` (common_name_key), as
    Collection.common_names offers them."""
    return Filter([f"vernacular_name={name}"], f"{_COMMON_NAME_SQL} = lower(?)",
                  [" ".join(name.split())])  # fmt: skip


def common_names_filter(names: Sequence[str]) -> Filter:
    """Catalog rows whose common name is one of `names` (common_name_key) — with BLANK
    among them, the empty frames too (blank_filter); all named rows (any common name)
    when `names` is empty."""
    if not names:
        return Filter(["named by a common name"], "trim(coalesce(vernacular_name, '')) <> ''", [])
    spelt = {common_name_key(n): " ".join(n.split()) for n in names}
    named = Filter([f"common name one of {len(spelt)} labels"],
                   f"{_COMMON_NAME_SQL} IN ({', '.join(['lower(?)'] * len(spelt))})",
                   list(spelt.values()))  # fmt: skip
    if common_name_key(BLANK) not in spelt:
        return named
    empty = blank_filter()
    return Filter([*named.conditions, *empty.conditions], f"({named.sql}) OR ({empty.sql})",
                  [*named.params, *empty.params])  # fmt: skip


def blank_filter() -> Filter:
    """Live rows a camera trap's record calls empty (`observationType` blank, as Camtrap DP
    writes it, or empty, as COCO Camera Traps categories do; kept in `extra`) and that name
    no animal."""
    return Filter(["blank frames"],
                  "trim(coalesce(vernacular_name, '')) = '' AND coalesce(scientific_name, '') = ''"
                  " AND lower(json_extract_string(extra, '$.observationType')) IN (?, ?)",
                  ["blank", "empty"])  # fmt: skip


def labelled_filter(rank: str) -> Filter:
    """Live images whose catalog row names a taxon at `rank`."""
    column = {"species": "scientific_name", "class": '"class"', "order": '"order"'}.get(rank, rank)
    if rank == "species":
        sql = "(specific_epithet IS NOT NULL OR scientific_name LIKE '% %')"
    else:
        sql = f"{column} IS NOT NULL AND {column} <> ''"
    return Filter(conditions=[f"labelled at {rank}"], sql=sql, params=[])
