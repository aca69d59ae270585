"""A store as a Darwin Core Archive: occurrence core, Simple Multimedia extension for the
images, Identification extension for bioindex's predictions, and EML with provenance.

The layout follows GBIF's own downloads (meta.xml + tab-separated text, UTF-8, one header
line, no quoting, EML in metadata.xml), so GBIF's IPT, python-dwca-reader and bioindex
itself read it. Tabs and line breaks inside values become spaces: the format has no
escape for them.
"""

from __future__ import annotations

import datetime as dt
import io
import mimetypes
import os
import shutil
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bioindex.errors import BioindexError
from bioindex.export.dwc_terms import DWC_TERMS
from bioindex.indexer.stored import archived, image_format
from bioindex.store import Store
from bioindex.store.records import DWC_COLUMNS
from bioindex.taxonomy import looks_scientific
from bioindex.uris import member_of

DWC = "http://rs.tdwg.org/dwc/terms/"
DCTERMS = "http://purl.org/dc/terms/"
GBIF = "http://rs.gbif.org/terms/1.0/"
TEXT_NS = "http://rs.tdwg.org/dwc/text/"
OCCURRENCE = DWC + "Occurrence"
MULTIMEDIA = GBIF + "Multimedia"
IDENTIFICATION = DWC + "Identification"

# Catalog columns that are not Darwin Core's own terms.
_DCTERMS_COLUMNS = {"license": "license", "rights_holder": "rightsHolder"}
_DCTERMS = {"license", "rightsHolder", "modified", "references", "language", "rights",
            "bibliographicCitation", "type", "accessRights", "source"}  # fmt: skip
_GBIF = {"gbifID", "datasetKey", "publishingOrgKey", "publishingCountry", "kingdomID",
         "phylumID", "classID", "orderID", "familyID", "genusID", "speciesID", "taxonKey",
         "elevationInMeters", "depthInMeters", "elevationPrecision", "depthPrecision",
         "verbatimScientificName", "verbatimKingdom", "verbatimPhylum", "verbatimClass",
         "verbatimOrder", "verbatimFamily", "verbatimGenus", "verbatimSpecificEpithet",
         "verbatimInfraspecificEpithet", "verbatimYear", "verbatimMonth",
         "verbatimBasisOfRecord", "created", "lastInterpreted", "issue"}  # fmt: skip
# Kept by bioindex beside the record, not terms of the record itself.
_NOT_TERMS = {"mediaIdentifier", "format", "creator", "title"}
_CLEAN = str.maketrans({"\t": " ", "\n": " ", "\r": " "})


def camel(column: str) -> str:
    """catalog_number → catalogNumber."""
    head, *rest = column.split("_")
    return head + "".join(part.capitalize() for part in rest)


def term_iri(name: str) -> str | None:
    """The IRI of a term Dublin Core, GBIF or Darwin Core has by this name; None for any
    other key (a metadata file's own column, a Camtrap DP's mediaID): those stay home
    rather than be exported as Darwin Core terms that do not exist."""
    if name in _DCTERMS:
        return DCTERMS + name
    if name in _GBIF:
        return GBIF + name
    return DWC + name if name in DWC_TERMS else None


@dataclass(frozen=True)
class Identification:
    """One prediction to hand back: which image, what it is, how sure, how it was made."""

    image_id: int
    scientific_name: str
    rank: str
    score: float
    method: str
    model: str
    date: str = field(default_factory=lambda: dt.date.today().isoformat())
    band: str = ""  # confident, or uncertain: backed off from the rank asked
    basis: str = ""  # what else it was judged from (the other frames of its burst)


@dataclass
class ArchiveSummary:
    path: str
    occurrences: int = 0
    images: int = 0
    identifications: int = 0
    media_copied: int = 0
    media_referenced: int = 0  # local files named by path: readable on this machine only

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Table:
    """A tab-separated member of the archive and the fields meta.xml lists for it."""

    def __init__(self, archive: zipfile.ZipFile, name: str, terms: Sequence[str]):
        self.name = name
        self.terms = list(terms)
        self._raw = archive.open(name, "w", force_zip64=True)
        self._text = io.TextIOWrapper(self._raw, encoding="utf-8", newline="")
        self.write([t.rsplit("/", 1)[-1] for t in self.terms])

    def write(self, values: Iterable[Any]) -> None:
        self._text.write("\t".join(_cell(v) for v in values) + "\n")

    def close(self) -> None:
        self._text.close()


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value).translate(_CLEAN)


def write_archive(
    store: Store,
    path: str | os.PathLike[str],
    *,
    image_ids: np.ndarray | None = None,
    identifications: Iterable[Identification] = (),
    with_media: bool = False,
    provenance: dict[str, Any] | None = None,
) -> ArchiveSummary:
    """Write the chosen images (all live ones by default) and their occurrences as a
    Darwin Core Archive at `path` (a .zip). With `with_media` local image files are copied
    into media/ so the archive stands alone; otherwise they are named by absolute path."""
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    summary = ArchiveSummary(str(target))
    extras = [k for k in store.catalog.extra_keys() if term_iri(k) and k not in _NOT_TERMS]
    columns = [c for c in DWC_COLUMNS if c != "creator"]
    core_terms = [DWC + "occurrenceID",
                  *(DCTERMS + _DCTERMS_COLUMNS[c] if c in _DCTERMS_COLUMNS else DWC + camel(c)
                    for c in columns if c != "occurrence_id"),
                  *(str(term_iri(k)) for k in extras)]  # fmt: skip
    extra_names = [t.rsplit("/", 1)[-1] for t in core_terms[len(columns):]]
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
            core = _Table(archive, "occurrence.txt", core_terms)
            for batch in store.catalog.export_occurrences(image_ids):
                for row in batch:
                    extra = _parse(row.get("extra"))
                    core.write([row["occurrence_id"], *(row.get(c) for c in columns[1:]),
                                *(extra.get(k) for k in extra_names)])  # fmt: skip
                    summary.occurrences += 1
            core.close()
            media, occurrence_of = _write_media(archive, store, image_ids, with_media, summary)
            tables = [core, media]
            identified = _write_identifications(archive, occurrence_of, identifications,
                                                summary)  # fmt: skip
            if identified is not None:
                tables.append(identified)
            archive.writestr("meta.xml", meta_xml(tables))
            archive.writestr("metadata.xml", eml_xml(store, summary, provenance or {}))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return summary


def _parse(extra: Any) -> dict[str, Any]:
    import json

    if not extra:
        return {}
    try:
        value = json.loads(extra)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


_MEDIA_TERMS = [DWC + "occurrenceID", DCTERMS + "identifier", DCTERMS + "type",
                DCTERMS + "format", DCTERMS + "license", DCTERMS + "rightsHolder",
                DCTERMS + "creator", DCTERMS + "references"]  # fmt: skip


def _write_media(archive: zipfile.ZipFile, store: Store, image_ids: np.ndarray | None,
                 with_media: bool, summary: ArchiveSummary
                 ) -> tuple[_Table, dict[int, str]]:  # fmt: skip
    """The multimedia table, and each image's occurrence key (for identifications)."""
    media = _Table(archive, "multimedia.txt", _MEDIA_TERMS)
    copies: list[tuple[dict[str, Any], str]] = []
    occurrence_of: dict[int, str] = {}
    for batch in store.catalog.export_media(image_ids):
        for row in batch:
            occurrence_of[int(row["image_id"])] = str(row["occurrence_id"])
            uri = str(row["uri"])
            container, member = member_of(uri) or (uri, "")
            name = member or uri.split("?")[0]  # what the image is called: its kind
            kind = mimetypes.guess_type(name)[0]
            suffix = Path(name).suffix.lower()
            identifier = uri
            if not uri.startswith(("http://", "https://")) and os.path.isfile(container):
                if not (kind or "").startswith("image/"):  # "shard.tar#000123": look inside
                    kind, suffix = image_format(row) or (kind, suffix)
                if with_media and (not member or archived(row) is not None):
                    identifier = f"media/{row['image_id']}{suffix}"
                    copies.append((row, identifier))
                else:
                    # A member of a zip or tar the image was indexed from: the container's
                    # file URI, the member after '#'.
                    identifier = Path(container).as_uri() + (f"#{member}" if member else "")
                    summary.media_referenced += 1
            kind = kind or "image/jpeg"
            extra = _parse(row.get("extra"))
            media.write([row["occurrence_id"], identifier, "StillImage", kind, row.get("license"),
                         row.get("rights_holder"), row.get("creator"),
                         extra.get("references")])  # fmt: skip
            summary.images += 1
    media.close()
    for row, name in copies:  # after the table: one member is written at a time
        # Stored, not deflated: images do not shrink, and a stored member is read in place.
        uri = str(row["uri"])
        if member_of(uri) is None:
            info = zipfile.ZipInfo.from_file(uri, name)
            info.compress_type = zipfile.ZIP_STORED
            with open(uri, "rb") as handle, archive.open(info, "w", force_zip64=True) as out:
                shutil.copyfileobj(handle, out, 1 << 20)
            summary.media_copied += 1
            continue
        member = archived(row)  # inside a zip or tar: found there when the table was written
        try:
            data = member.read_bytes() if member is not None else None
        except OSError:
            data = None
        if data is None:
            raise BioindexError(f"{uri} changed or became unreadable while the archive was "
                                f"written; export again")  # fmt: skip
        archive.writestr(zipfile.ZipInfo(name, dt.datetime.now().timetuple()[:6]), data,
                         compress_type=zipfile.ZIP_STORED)  # fmt: skip
        summary.media_copied += 1
    return media, occurrence_of


_IDENTIFICATION_TERMS = [DWC + "occurrenceID", DWC + "scientificName", DWC + "taxonRank",
                         DWC + "vernacularName", DWC + "identifiedBy", DWC + "dateIdentified",
                         DWC + "identificationRemarks", DCTERMS + "identifier"]  # fmt: skip


def _names(item: Identification) -> tuple[str, str, str]:
    """(scientificName, taxonRank, vernacularName): a free label (no rank: a catalog's
    common name, a `--labels` word) is a scientific name only when it reads as one; "zebra"
    in scientificName would be a wrong name to GBIF, not an unranked one."""
    if item.rank or looks_scientific(item.scientific_name):
        return item.scientific_name, item.rank, ""
    return "", "", item.scientific_name


def _write_identifications(archive: zipfile.ZipFile, occurrence_of: dict[int, str],
                           identifications: Iterable[Identification],
                           summary: ArchiveSummary) -> _Table | None:  # fmt: skip
    table: _Table | None = None
    for item in identifications:
        if item.image_id not in occurrence_of:
            continue
        if table is None:
            table = _Table(archive, "identification.txt", _IDENTIFICATION_TERMS)
        table.write([occurrence_of[item.image_id], *_names(item),
                     f"bioindex (model {item.model})", item.date,
                     f"method {item.method}; {item.band + '; ' if item.band else ''}"
                     f"{item.basis + '; ' if item.basis else ''}"
                     f"score {item.score:.4f}; image_id {item.image_id}",
                     f"bioindex:image:{item.image_id}"])  # fmt: skip
        summary.identifications += 1
    if table is not None:
        table.close()
    return table


def meta_xml(tables: Sequence[_Table]) -> str:
    """The archive descriptor, shaped like GBIF's downloads."""
    ET.register_namespace("", TEXT_NS)
    root = ET.Element(f"{{{TEXT_NS}}}archive", {"metadata": "metadata.xml"})
    for position, table in enumerate(tables):
        row_type = {"occurrence.txt": OCCURRENCE, "multimedia.txt": MULTIMEDIA,
                    "identification.txt": IDENTIFICATION}[table.name]  # fmt: skip
        element = ET.SubElement(root, f"{{{TEXT_NS}}}{'core' if position == 0 else 'extension'}",
                                {"encoding": "UTF-8", "fieldsTerminatedBy": "\\t",
                                 "linesTerminatedBy": "\\n", "fieldsEnclosedBy": "",
                                 "ignoreHeaderLines": "1", "rowType": row_type})  # fmt: skip
        files = ET.SubElement(element, f"{{{TEXT_NS}}}files")
        ET.SubElement(files, f"{{{TEXT_NS}}}location").text = table.name
        ET.SubElement(element, f"{{{TEXT_NS}}}{'id' if position == 0 else 'coreid'}",
                      {"index": "0"})  # fmt: skip
        for index, term in enumerate(table.terms):
            ET.SubElement(element, f"{{{TEXT_NS}}}field", {"index": str(index), "term": term})
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode")


def eml_xml(store: Store, summary: ArchiveSummary, provenance: dict[str, Any]) -> str:
    """EML 2.1.1 with what a reader needs to trust the vectors and predictions behind it."""
    from bioindex import __version__

    eml = "eml://ecoinformatics.org/eml-2.1.1"
    ET.register_namespace("eml", eml)
    root = ET.Element(f"{{{eml}}}eml", {"packageId": f"bioindex-export-{store.generation()}",
                                         "system": "bioindex", "scope": "system"})  # fmt: skip
    dataset = ET.SubElement(root, "dataset")
    ET.SubElement(dataset, "title").text = f"bioindex export of {store.path.name}"
    creator = ET.SubElement(ET.SubElement(dataset, "creator"), "organizationName")
    creator.text = f"bioindex {__version__}"
    ET.SubElement(dataset, "pubDate").text = dt.date.today().isoformat()
    model = store.model
    lines = [
        f"Exported by bioindex {__version__} from store generation {store.generation()}: "
        f"{summary.occurrences} occurrences, {summary.images} images, "
        f"{summary.identifications} machine identifications.",
        f"Embedding model: {model.get('name')} ({model.get('source')}), weights sha256 "
        f"{model.get('weights_sha256')}, {model.get('dim')}-d, preprocessing "
        f"{model.get('preprocess')} at {model.get('image_size')} px, L2-normalised.",
        *(f"{key}: {value}" for key, value in provenance.items()),
    ]
    abstract = ET.SubElement(dataset, "abstract")
    for line in lines:
        ET.SubElement(abstract, "para").text = line
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode")
