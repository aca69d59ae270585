"""Darwin Core Archives: meta.xml-driven, streaming, forgiving of real-world files.

python-dwca-reader was tried first and refuses real archives whose meta.xml says
fieldsEnclosedBy="" over quoted CSV (the ALA dwcahandler samples: "array index out of
range", "non-existent field"). So this reader follows meta.xml for columns and delimiters
but decides quoting by what the delimiter implies: an empty encloser means no quoting for
tab-separated files (GBIF downloads put bare quotes inside values) and RFC 4180 quoting for
comma-separated ones.

Also reads the iDigBio download layout (occurrence.csv + multimedia.csv joined on coreid),
which has no meta.xml.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import re
import xml.etree.ElementTree as ET
import zipfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from bioindex.errors import BioindexError
from bioindex.images import IMAGE_EXTENSIONS
from bioindex.indexer.lines import Lines
from bioindex.indexer.zipped import DAMAGED, UNREADABLE_MEMBER, refuse_bombs

MULTIMEDIA_TYPES = {
    "http://rs.gbif.org/terms/1.0/multimedia": "identifier",
    "http://rs.gbif.org/terms/1.0/image": "identifier",
    "http://rs.tdwg.org/ac/terms/multimedia": "accessURI",
    "http://rs.tdwg.org/ac/terms/media": "accessURI",
}
OCCURRENCE_TYPE = "http://rs.tdwg.org/dwc/terms/occurrence"

_TERM = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
# Archives come from strangers: a zip bomb is refused (zipped.refuse_bombs), and no line
# may outgrow LINE_LIMIT.


@dataclass
class TableSpec:
    files: list[str]
    row_type: str
    delimiter: str = ","
    encloser: str = '"'
    ignore_header: int = 0
    encoding: str = "utf-8"
    key_index: int | None = None  # <id> for the core, <coreid> for extensions
    fields: dict[int, str] = field(default_factory=dict)  # column index → term (short name)
    defaults: dict[str, str] = field(default_factory=dict)


@dataclass
class Occurrence:
    """One core row: its id, its terms (short names), and its media rows."""

    core_id: str
    terms: dict[str, str]
    media: list[dict[str, str]]


def short_term(term: str) -> str:
    return term.rstrip("/").rsplit("/", 1)[-1].split(":")[-1]


def _unescape(value: str | None, default: str) -> str:
    if value is None:
        return default
    return codecs.decode(value, "unicode_escape") if "\\" in value else value


class Archive:
    """A DwC-A as a zip file or a folder."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.warnings: list[str] = []
        if not self.path.exists():
            raise BioindexError(f"Darwin Core Archive {path} does not exist")
        try:
            self._zip = zipfile.ZipFile(self.path) if self.path.is_file() else None
        except DAMAGED as exc:
            raise BioindexError(f"{path} is not a readable zip file ({exc})") from None
        if self._zip is not None:
            refuse_bombs(self._zip, self.path)
        names = self._names()
        prefix = _common_prefix(names)
        self._prefix = prefix
        if f"{prefix}meta.xml" in names:
            self.core, self.extensions = _read_meta(self._read(f"{prefix}meta.xml"))
        elif f"{prefix}occurrence.csv" in names:
            self.core, self.extensions = _idigbio_specs(self, names, prefix)
        else:
            photos = sum(Path(n).suffix.lower() in IMAGE_EXTENSIONS for n in names)
            hint = (f"; it holds {photos} image files: index it as a zip of photos (source "
                    f"type zip, what auto picks for a zip without meta.xml)" if photos
                    else "")  # fmt: skip
            raise BioindexError(f"{path} is not a Darwin Core Archive: it has no meta.xml "
                                f"(nor iDigBio's occurrence.csv){hint}")  # fmt: skip
        if self.core.key_index is None:
            self.core.key_index = 0
        for spec in (self.core, *self.extensions):
            for location in spec.files:
                self._check_location(location, names)

    def _check_location(self, location: str, names: set[str]) -> None:
        """meta.xml names files inside the archive only ("../../etc/passwd" is refused)."""
        name = self._prefix + location
        inside = name in names
        if inside and self._zip is None:
            inside = (self.path / name).resolve().is_relative_to(self.path.resolve())
        if not inside:
            raise BioindexError(f"{self.path}: meta.xml names {location!r}, which is not a "
                                f"file in the archive")  # fmt: skip

    def member_name(self, name: str) -> str | None:
        """The zip member a path relative to the archive names (its folder prefixed, when
        the archive was zipped inside one), or None for a folder archive."""
        if self._zip is None:
            return None
        return self._prefix + name.removeprefix("./")

    def _names(self) -> set[str]:
        if self._zip is not None:
            return {n for n in self._zip.namelist() if not n.startswith("__MACOSX/")}
        return {p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file()}

    def _read(self, name: str) -> bytes:
        try:
            with self._open(name) as handle:
                return handle.read()
        except (*UNREADABLE_MEMBER, UnicodeDecodeError) as exc:  # a mangled header's name
            raise self._unreadable(name, exc) from None

    def _unreadable(self, name: str, exc: BaseException) -> BioindexError:
        return BioindexError(f"{self.path}: {name} could not be read from it "
                             f"({type(exc).__name__}: {exc})")

    def _open(self, name: str) -> BinaryIO:
        if self._zip is not None:
            return self._zip.open(name)
        return open(self.path / name, "rb")

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def rows(self, spec: TableSpec) -> Iterator[tuple[str | None, dict[str, str]]]:
        """(key, {term: value}) for every data row of a table, streamed; a line that does
        not decode in the declared encoding, or is too long, is a one-line error naming the
        file and the line."""
        for location in spec.files:
            lines = Lines(location)
            try:
                with self._open(self._prefix + location) as raw:
                    yield from self._table_rows(raw, spec, lines)
            except UnicodeDecodeError:
                raise BioindexError(f"{location}: line {lines.number} is not {spec.encoding} "
                                    f"text (the encoding the archive declares)") from None
            except csv.Error as exc:
                raise BioindexError(f"{location}: line {lines.number}: {exc}") from None
            except LookupError:
                raise BioindexError(f"{location}: meta.xml declares an unknown encoding "
                                    f"{spec.encoding!r}") from None  # fmt: skip
            except UNREADABLE_MEMBER as exc:
                raise self._unreadable(location, exc) from None

    def _table_rows(self, raw: BinaryIO, spec: TableSpec, lines: Lines,
                    ) -> Iterator[tuple[str | None, dict[str, str]]]:  # fmt: skip
        reader = _reader(lines.of(raw, spec.encoding), spec)
        fields = spec.fields
        for line in range(spec.ignore_header):
            header = next(reader, None)
            if line == 0 and header:
                fields = self._trusted_fields(spec, header)
        for values in reader:
            if not values or values == [""]:
                continue
            terms = dict(spec.defaults)
            for index, term in fields.items():
                if index < len(values) and values[index] != "":
                    terms[term] = values[index]
            key = (
                values[spec.key_index]
                if spec.key_index is not None and (spec.key_index < len(values))
                else None
            )
            yield key, terms

    def _trusted_fields(self, spec: TableSpec, header: list[str]) -> dict[int, str]:
        """meta.xml's columns, unless the file's own header row names other terms at the
        same positions (seen in the wild: meta.xml shifted by one against its data)."""
        names = [short_term(h.strip()) for h in header]
        if not all(_TERM.match(n) for n in names) or len(set(names)) != len(names):
            return spec.fields
        if all(index >= len(names) or names[index] == term
               for index, term in spec.fields.items()):  # fmt: skip
            return spec.fields
        self.warnings.append(
            f"{spec.files[0]}: meta.xml columns disagree with the file's header row; "
            f"the header was used"
        )
        return {i: n for i, n in enumerate(names)}

    def media_extension(self) -> tuple[TableSpec, str] | None:
        for spec in self.extensions:
            link = MULTIMEDIA_TYPES.get(spec.row_type.lower())
            if link:
                return spec, link
        return None

    def occurrences(self) -> Iterator[Occurrence]:
        """Core rows with their media rows (media are grouped in memory, core is streamed)."""
        media: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
        found = self.media_extension()
        if found is not None:
            spec, link = found
            for key, terms in self.rows(spec):
                if key is not None and terms.get(link):
                    terms["_media_uri"] = terms[link]
                    # Some publishers reuse one id for many records (an institution code);
                    # the catalog number, when both tables carry it, tells them apart.
                    media[(key, terms.get("catalogNumber", ""))].append(terms)
        for key, terms in self.rows(self.core):
            core_id = key or terms.get("occurrenceID") or ""
            found = media.pop((core_id, terms.get("catalogNumber", "")), None)
            if found is None:
                found = media.pop((core_id, ""), [])
            yield Occurrence(core_id, terms, found)


def _reader(lines: Iterator[str], spec: TableSpec) -> Iterator[list[str]]:
    if spec.encloser or spec.delimiter == ",":
        # Quoted fields: the csv module, with its own field limit (128 KiB by default, and
        # never raised here: the limit is process-wide).
        return csv.reader(lines, delimiter=spec.delimiter, quotechar=spec.encloser or '"')
    # Unquoted (GBIF's tab-separated downloads): a plain split has no field limit.
    return (line.rstrip("\r\n").split(spec.delimiter) for line in lines)


def _read_meta(data: bytes) -> tuple[TableSpec, list[TableSpec]]:
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise BioindexError(f"meta.xml is not valid XML: {exc}") from exc
    core = None
    extensions = []
    for element in root:
        tag = element.tag.rsplit("}", 1)[-1]
        if tag not in ("core", "extension"):
            continue
        spec = TableSpec(
            files=[(loc.text or "").strip() for loc in element.iter() if
                   loc.tag.rsplit("}", 1)[-1] == "location"],
            row_type=element.get("rowType", ""),
            delimiter=_unescape(element.get("fieldsTerminatedBy"), ","),
            encloser=_unescape(element.get("fieldsEnclosedBy"), '"'),
            ignore_header=int(element.get("ignoreHeaderLines", "0") or 0),
            encoding=element.get("encoding", "utf-8") or "utf-8",
        )  # fmt: skip
        for child in element:
            child_tag = child.tag.rsplit("}", 1)[-1]
            if child_tag in ("id", "coreid") and child.get("index") is not None:
                spec.key_index = int(child.get("index"))
            elif child_tag == "field":
                term = short_term(child.get("term", ""))
                if child.get("index") is not None:
                    spec.fields[int(child.get("index"))] = term
                elif child.get("default") is not None:
                    spec.defaults[term] = child.get("default")
        if tag == "core":
            core = spec
        else:
            extensions.append(spec)
    if core is None:
        raise BioindexError("meta.xml has no <core> table")
    return core, extensions


def _idigbio_specs(archive: Archive, names: set[str], prefix: str):
    def spec_for(name: str, row_type: str) -> TableSpec:
        try:
            with archive._open(prefix + name) as raw:
                header = next(csv.reader(io.TextIOWrapper(raw, encoding="utf-8", newline="")))
        except UNREADABLE_MEMBER as exc:
            raise archive._unreadable(name, exc) from None
        fields = {i: short_term(h) for i, h in enumerate(header)}
        key = next((i for i, h in fields.items() if h.lower() in ("coreid", "id")), 0)
        return TableSpec([name], row_type, ",", '"', 1, "utf-8", key, fields)

    core = spec_for("occurrence.csv", OCCURRENCE_TYPE)
    extensions = []
    if f"{prefix}multimedia.csv" in names:
        extensions.append(spec_for("multimedia.csv", "http://rs.tdwg.org/ac/terms/Multimedia"))
    return core, extensions


def _common_prefix(names: set[str]) -> str:
    """Archives zipped with their folder put everything under one directory."""
    for name in names:
        if name.endswith("meta.xml") or name.endswith("occurrence.csv"):
            return name[: name.rfind("/") + 1] if "/" in name else ""
    return ""


def is_archive(path: Path) -> bool:
    if path.is_dir():
        return (path / "meta.xml").is_file() or (path / "occurrence.csv").is_file()
    return path.suffix.lower() == ".zip"
