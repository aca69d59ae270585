"""Where images come from. An item is a uri, how to read its bytes, and its metadata.

Source types (chosen from the path unless --source-type says):
  folder       a directory walked recursively (+ optional sidecar metadata CSV/TSV/Parquet)
  file         single image files
  manifest     a CSV/TSV/Parquet table with a path or URL column and metadata columns
  dwca         a Darwin Core Archive (zip or folder with meta.xml; iDigBio's layout too)
  zip          a zip of photos (no meta.xml), each read in place (+ optional sidecar)
  webdataset   tar shards, brace patterns allowed (shard-{000000..000165}.tar), with the
               TreeOfLife-10M keys (jpg, taxonomic_name.txt, scientific_name.txt, …)
  iiif         a IIIF Presentation manifest or collection (v2 or v3), a .json file or URL
  speciesnet   a SpeciesNet instances or predictions .json (camera traps; indexer/speciesnet)
  coco         a COCO Camera Traps .json (LILA's datasets; indexer/cococt)
  camtrap-dp   a Camera Trap Data Package: a folder with datapackage.json (indexer/camtrapdp)
"""

from __future__ import annotations

import bz2
import csv
import functools
import logging
import lzma
import os
import re
import stat
import tarfile
import urllib.parse
import zipfile
import zlib
from collections import Counter
from collections.abc import Container, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

from bioindex.errors import BioindexError
from bioindex.images import IMAGE_EXTENSIONS, unread_note, walk_images
from bioindex.indexer import iiif, jsonlists
from bioindex.indexer.lines import Lines
from bioindex.indexer.names_table import NamesTable
from bioindex.indexer.remote import FetchPolicy
from bioindex.tables import WORKBOOK_SUFFIXES, delimiter, workbook_rows
from bioindex.uris import is_remote

MAX_FILE_BYTES = 1 << 30  # one image file; a 150 MP uncompressed TIFF master is ~450 MB
SOURCE_TYPES = ("auto", "folder", "file", "manifest", "dwca", "zip", "webdataset", "iiif",
                "speciesnet", "coco", "camtrap-dp")
JSON_LISTS = ("speciesnet", "coco")  # JSON files listing photos: indexed as manifests
TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", *WORKBOOK_SUFFIXES)
_URI_COLUMNS = ("path", "file", "filename", "uri", "url", "identifier", "accessuri", "image")
_SHARD_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Item:
    uri: str
    path: str  # a local file ('' for remote media until downloaded)
    size: int | None
    mtime: float | None
    metadata: dict[str, Any] = field(default_factory=dict)
    offset: int | None = None  # bytes of a tar or zip member start here in `path`
    packed: int | None = None  # a compressed zip member's length at `offset` (size: unpacked)
    fetch_via: str = ""  # how a remote item is fetched, when not from its uri (IIIF)
    method: int = zipfile.ZIP_DEFLATED  # how a `packed` member is compressed (zipfile.ZIP_*)

    def with_metadata(self, terms: dict[str, Any]) -> Item:
        """This item with `terms` over its metadata (built directly: dataclasses.replace
        took 5 of the 8 seconds naming a million photos from a names table)."""
        return Item(self.uri, self.path, self.size, self.mtime, {**self.metadata, **terms},
                    self.offset, self.packed, self.fetch_via, self.method)  # fmt: skip

    def read_bytes(self, max_bytes: int = MAX_FILE_BYTES) -> bytes:
        """The file's bytes; only a regular file is read (a device, pipe or socket named in
        a manifest would block or never end), and at most `max_bytes` of it."""
        with _open_regular(self.path) as handle:
            if self.offset is None:
                if os.fstat(handle.fileno()).st_size > max_bytes:
                    raise OSError(f"larger than the {max_bytes >> 20} MiB cap on one file")
                return handle.read(max_bytes + 1)
            if (self.size or 0) > max_bytes:
                raise OSError(f"larger than the {max_bytes >> 20} MiB cap on one file")
            handle.seek(self.offset)
            data = handle.read(self.size or 0 if self.packed is None else self.packed)
        if self.packed is not None:
            data = _inflate(data, self.packed, self.size or 0, self.method)
        if len(data) != self.size:
            raise OSError(f"archive member is truncated ({len(data)} of {self.size} bytes)")
        return data

    def read_head(self, count: int) -> bytes:
        """Its first `count` bytes (fewer when it is shorter), inflating no more than they
        need: enough to tell its format."""
        with _open_regular(self.path) as handle:
            if self.offset is None:
                return handle.read(count)
            handle.seek(self.offset)
            if self.packed is None:
                return handle.read(min(count, self.size or 0))
            # bzip2 unpacks nothing before a whole block (up to 900 kB) is in.
            whole = self.method == zipfile.ZIP_BZIP2
            packed = handle.read(self.packed if whole else min(self.packed, 4 * count + 1024))
        return _unpack(packed, self.method, count)

    @property
    def remote(self) -> bool:
        return not self.path and (bool(self.fetch_via) or is_remote(self.uri))


def _open_regular(path: str) -> BinaryIO:
    """`path` opened for reading if it is a regular file (a device, pipe or socket named in
    a manifest would block or never end)."""
    # O_NONBLOCK: opening a FIFO must not wait for a writer; regular files ignore it.
    handle = os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb")
    if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
        handle.close()
        raise OSError("not a regular file (a device, pipe or socket)")
    return handle


def _inflate(data: bytes, packed: int, size: int, method: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A compressed zip member's bytes, never more than the `size` its zip declares (a
    member that unpacks past it is damaged or lying)."""
    if len(data) != packed:
        raise OSError(f"zip member is truncated ({len(data)} of {packed} bytes)")
    out = _unpack(data, method, size + 1)
    if len(out) > size:
        raise OSError(f"zip member inflates past the {size} bytes its zip declares")
    return out


def _unpack(data: bytes, method: int, limit: int) -> bytes:
    """At most `limit` bytes of a zip member compressed by `method` (zipfile.ZIP_*)."""
    try:
        if method == zipfile.ZIP_DEFLATED:
            return zlib.decompressobj(-zlib.MAX_WBITS).decompress(data, limit)
        if method == zipfile.ZIP_BZIP2:
            return bz2.BZ2Decompressor().decompress(data, limit)
        if method == zipfile.ZIP_LZMA:
            return _zip_lzma(data).decompress(data[4 + int.from_bytes(data[2:4], "little"):],
                                              limit)  # fmt: skip
    except (zlib.error, lzma.LZMAError, OSError, ValueError) as exc:
        raise OSError(f"zip member does not unpack ({exc})") from None
    raise OSError(f"zip member compressed by method {method}, which bioindex does not read")


def _zip_lzma(data: bytes) -> lzma.LZMADecompressor:
    """A raw LZMA1 decompressor for a zip's LZMA member, which starts with the version of
    the LZMA SDK that wrote it (2 bytes), the length of its properties (2) and those: lc, lp
    and pb in one byte, the dictionary size in four (PKWARE APPNOTE 5.8.8)."""
    props = data[4 : 4 + int.from_bytes(data[2:4], "little")]
    if len(props) < 5:
        raise ValueError("its LZMA header is cut short")
    bits, dictionary = props[0], int.from_bytes(props[1:5], "little")
    return lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[{
        "id": lzma.FILTER_LZMA1, "dict_size": dictionary, "lc": bits % 9,
        "lp": bits // 9 % 5, "pb": bits // 45}])  # fmt: skip


@dataclass
class Scan:
    """What the sources hold now, and which stored uris they are responsible for."""

    items: list[Item]
    roots: list[str]  # folder prefixes (with trailing separator) and single-file uris
    sources: list[str] = field(default_factory=list)  # every source as given, resolved
    # Darwin Core Archives whose occurrence records are streamed into the catalog at index
    # time (never held in memory: a GBIF download can hold tens of millions).
    archives: list[str] = field(default_factory=list)
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (uri, stage, error)
    warnings: list[str] = field(default_factory=list)
    unread: Counter[str] = field(default_factory=Counter)  # left-out media files, by kind
    notes: list[str] = field(default_factory=list)  # what the run should say it did


def scan_paths(
    paths: Sequence[str | os.PathLike[str]],
    metadata_file: str | None = None,
    source_type: str = "auto",
    media_root: str | os.PathLike[str] | None = None,
    allow_outside_paths: bool = False,
    fetch_policy: FetchPolicy | None = None,
    names_from_folders: bool = False,
    names_table: NamesTable | None = None,
) -> Scan:
    """List what the sources hold; raise on missing paths or when nothing is found.
    Media paths of manifests and archives must stay inside their folder (or `media_root`)
    unless `allow_outside_paths`; others are recorded as failures. `names_from_folders`:
    a photo in a folder named for a species ("Panthera leo/") is named so, where its
    --metadata row names nothing. `names_table`: a photo called by a common name and
    named nothing else gets the taxon the table gives that name."""
    if not paths:
        raise BioindexError("no source given; name folders, image files, tables or archives")
    if source_type not in SOURCE_TYPES:
        raise BioindexError(f"unknown source type {source_type!r}; one of {SOURCE_TYPES}")
    sidecar = Sidecar(read_table(metadata_file) if metadata_file else {})
    _real_dir.cache_clear()  # folders may have been moved or relinked since the last scan
    scan = Scan(items=[], roots=[])
    items: dict[str, Item] = {}
    for raw in paths:
        if (shown := _shown_name(str(raw))) is not None:
            raise BioindexError(f"source {shown}: {NOT_UTF8}")
        kind = source_type if source_type != "auto" else detect(str(raw))
        if kind == "iiif":
            scan.sources.append(str(raw) if is_remote(str(raw)) else
                                str(Path(raw).expanduser().resolve()))  # fmt: skip
            _scan_iiif(str(raw), items, fetch_policy or FetchPolicy())
            continue
        if kind == "webdataset":
            scan.sources.append(str(raw))
            _scan_shards(str(raw), items, scan)
            continue
        path = Path(raw).expanduser()
        if not path.exists():
            raise BioindexError(f"source {raw} does not exist")
        path = path.resolve()
        if str(path) in scan.sources:  # given twice (a link to it, "./x/"): its videos,
            continue  # raw files and failures were counted twice
        scan.sources.append(str(path))
        if kind == "folder":
            scan.roots.append(str(path) + os.sep)
            if not metadata_file:
                scan.warnings.extend(_unread_sidecars(path))
            for file in walk_images(path, scan.unread):
                if (shown := _shown_name(str(file))) is not None:
                    scan.failures.append((shown, "read", NOT_UTF8))
                    continue
                items.setdefault(str(file), _file_item(file, path, sidecar))
        elif kind == "file":
            scan.roots.append(str(path))
            items.setdefault(str(path), _file_item(path, path.parent, sidecar))
        elif kind in ("manifest", "camtrap-dp", *JSON_LISTS):
            _scan_manifest(path, kind, media_root, items, scan, allow_outside_paths)
        elif kind == "dwca":
            _scan_archive(path, media_root, items, scan, allow_outside_paths)
        elif kind == "zip":
            _scan_zip(path, items, scan, sidecar)
    sidecar.pair_by_name(items)
    if names_from_folders:
        _name_from_folders(items, scan)
    if names_table is not None:
        _name_from_table(items, scan, names_table)
    scan.items = sorted(items.values(), key=lambda i: i.uri)
    unmatched = sidecar.unclaimed()
    if unmatched:  # a typo or a file not copied: its metadata would vanish unsaid
        verb = "names" if len(unmatched) == 1 else "name"
        scan.warnings.append(f"{len(unmatched)} of the {len(sidecar.rows)} rows of "
                             f"{metadata_file} {verb} no image under the sources (first: "
                             f"{unmatched[0]})")
    if scan.unread:
        scan.warnings.append(unread_note(scan.unread))
    if not scan.items and not scan.archives and not scan.failures:
        raise BioindexError(
            f"no images found in {', '.join(map(str, paths))} "
            f"(looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
            + (f"; {unread_note(scan.unread)}" if scan.unread else "")
        )
    return scan


NOT_UTF8 = ("its name is not UTF-8 (bytes from another system's encoding), so it cannot be "
            "stored; rename it (convmv -f latin1 -t utf8 -r --notest FOLDER)")


def _shown_name(name: str) -> str | None:
    """None for a name the catalog can store; else the name with the bytes that are not
    UTF-8 escaped (Python reads them as lone surrogates, which DuckDB refuses: one such
    file stopped a whole run at its first commit)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace")
    return None


def detect(raw: str) -> str:
    if is_remote(raw):
        return "iiif"  # the one kind of source given by URL
    if "{" in raw and "}" in raw or raw.endswith(".tar"):
        return "webdataset"
    path = Path(raw).expanduser()
    from bioindex.indexer.camtrapdp import package_file

    if path.is_dir():
        from bioindex.indexer.dwca import is_archive

        if package_file(path) is not None:
            return "camtrap-dp"
        return "dwca" if is_archive(path) else "folder"
    suffix = path.suffix.lower()
    if suffix == ".zip":
        from bioindex.indexer.zipped import holds_darwin_core, holds_data_package

        if not path.is_file() or holds_darwin_core(path):
            return "dwca"
        if holds_data_package(path):  # its tables name its photos: read unzipped
            raise BioindexError(f"{raw} holds a Camera Trap Data Package: unzip it and "
                                f"index its folder")  # fmt: skip
        return "zip"
    if suffix in TABLE_SUFFIXES:
        return "manifest"
    if suffix in (".json", ".jsonld"):
        from bioindex.indexer.cococt import looks_like
        from bioindex.indexer.speciesnet import is_speciesnet

        if is_speciesnet(path):
            return "speciesnet"
        if looks_like(path):
            return "coco"
        return "camtrap-dp" if package_file(path) is not None else "iiif"
    if suffix in IMAGE_EXTENSIONS or not path.exists():
        return "file"
    raise BioindexError(f"source {raw} is not a folder, image, table, archive or tar shard")


class Covered:
    """Whether a uri lies under a scan's roots (folder prefixes ending in a separator, and
    single files), in constant time per uri where the roots are files: `bioindex index
    photos/*.jpg` gives thousands of them, and every stored row is asked."""

    def __init__(self, roots: Sequence[str]):
        self.files = {root for root in roots if not root.endswith(os.sep)}
        self.folders = tuple(root for root in roots if root.endswith(os.sep))

    def __call__(self, uri: str) -> bool:
        return uri in self.files or uri.startswith(self.folders)


# ---- tables (sidecars and manifests) ------------------------------------------------


def iter_table_rows(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Rows of a CSV/TSV/Parquet file or an Excel workbook as dicts, streamed."""
    file = Path(path)
    if not file.is_file():
        raise BioindexError(f"table {path} does not exist")
    if file.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(file).iter_batches(batch_size=8192):
            yield from batch.to_pylist()
        return
    if file.suffix.lower() in WORKBOOK_SUFFIXES:
        yield from workbook_rows(file)
        return
    delimiter = "\t" if file.suffix.lower() in (".tsv", ".txt") else _delimiter(file)
    lines = Lines(str(file))
    said = False
    try:
        with open(file, "rb") as raw:
            for row in csv.DictReader(lines.of(raw, "utf-8-sig"), dialect="excel",
                                      delimiter=delimiter):  # fmt: skip
                # Fields past the header's (a trailing separator, a stray comma) have no
                # name: csv files them under None, where a traceback came from.
                extra = row.pop(None, None)  # type: ignore[call-overload]
                if extra and any(str(v).strip() for v in extra) and not said:
                    log.warning("%s: line %d has more fields than its header; those past "
                                "it are left out", file, lines.number)  # fmt: skip
                    said = True
                yield row
    except UnicodeDecodeError:
        raise BioindexError(f"{file}: line {lines.number} is not UTF-8 text; save the table "
                            f"as UTF-8") from None  # fmt: skip
    except csv.Error as exc:  # a field over the csv module's 128 KiB, a stray NUL, …
        raise BioindexError(f"{file}: line {lines.number}: {exc}") from None


_NAME_TERMS = {"scientific_name", "genus", "specific_epithet", "kingdom", "phylum", "class",
               "order", "family"}


class _Names:
    """What a photo's metadata already names: its taxon terms and its common name (each
    key's catalog column looked up once: a million photos share a dozen keys)."""

    def __init__(self) -> None:
        from bioindex.store import dwc_column

        self._column = dwc_column
        self._columns: dict[str, str | None] = {}

    def of(self, metadata: dict[str, Any]) -> tuple[bool, str | None]:
        """(whether it names a taxon, its common name or None)."""
        common = None
        for key, value in metadata.items():
            if value in (None, ""):
                continue
            if key not in self._columns:
                self._columns[key] = self._column(key)
            column = self._columns[key]
            if column in _NAME_TERMS:
                return True, common
            if column == "vernacular_name":
                common = str(value)
        return False, common


def _name_from_folders(items: dict[str, Item], scan: Scan) -> None:
    """Name each local photo for the nearest of its folders named for a species (up to the
    source folder it was found in: `Panthera leo/2023/x.jpg` is a lion), when the photo's
    metadata names nothing; say which names were given (a folder "Blank images" reads as a
    binomial: the curator sees it) and which folders gave none."""
    from bioindex.taxonomy import folder_name_taxon

    named: Counter[str] = Counter()
    unnamed: Counter[str] = Counter()
    names = _Names()
    for uri, item in items.items():
        if not item.path or names.of(item.metadata)[0]:
            continue
        folders = _folders_up(item.path, scan.roots)
        taxon = next(filter(None, map(folder_name_taxon, folders)), None)
        if taxon is None:
            unnamed[folders[0]] += 1
            continue
        terms = {"scientificName": f"{taxon.genus} {taxon.epithet}"}
        if taxon.kingdom:  # the seven ranks
            terms.update(kingdom=taxon.kingdom, phylum=taxon.phylum, **{"class": taxon.class_},
                         order=taxon.order, family=taxon.family)  # fmt: skip
        items[uri] = item.with_metadata(terms)
        named[terms["scientificName"]] += 1
    if unnamed and not named and _common_names_from_folders(items, scan):
        return  # a camera trap's sorted folders: zebra/, elephant/
    scan.notes.append(f"named {_photos(sum(named.values()))} for their folders: "
                      f"{_shown(named)}")  # fmt: skip
    if unnamed:
        examples = ", ".join(repr(name) for name, _ in unnamed.most_common(3))
        scan.notes.append(f"{_photos(sum(unnamed.values()))} in folders not named for a "
                          f"species ({examples}): left unnamed")  # fmt: skip


def _name_from_table(items: dict[str, Item], scan: Scan, table: NamesTable) -> None:
    """Give each photo called by a common name (and named nothing else) the taxon `table`
    maps that name to; say which names it named, and which it could not."""
    named: Counter[str] = Counter()
    missing: Counter[str] = Counter()
    names = _Names()
    looked: dict[str, tuple[str, dict[str, str] | None]] = {}  # a million photos, few names
    for uri, item in items.items():
        taxon_named, common = names.of(item.metadata)
        if common is None or taxon_named:
            continue
        if common not in looked:
            looked[common] = (" ".join(common.split()), table.lookup(common))
        shown, terms = looked[common]
        if terms is None:
            missing[shown] += 1
            continue
        items[uri] = item.with_metadata(terms)
        named[f"{shown} → {terms['scientificName']}"] += 1
    scan.notes.append(f"named {_photos(sum(named.values()))} by {table.source}: "
                      f"{_shown(named)}")  # fmt: skip
    unclear = Counter({name: n for name, n in missing.items()
                       if table.is_ambiguous(name)})  # fmt: skip
    if unclear:
        scan.notes.append(f"{_photos(sum(unclear.values()))} called by names {table.source} "
                          f"gives several taxa ({_shown(unclear)}): left unnamed; choose "
                          f"the dataset's rows")  # fmt: skip
    if missing - unclear:
        scan.notes.append(f"{_photos(sum((missing - unclear).values()))} called by names "
                          f"{table.source} does not give: {_shown(missing - unclear)}")


def _common_names_from_folders(items: dict[str, Item], scan: Scan) -> bool:
    """Where no folder is named for a species, a photo's folder just below the source
    folder is its common name ("zebra/cam 2/2023/" → zebra: sorting tools file photos by
    species first; a folder's own name cannot tell an animal from a camera), as training
    folders are read (search.training); says which names it gave. False when it named
    none (photos at the source folder's top, or in folders of digits)."""
    named: Counter[str] = Counter()
    names = _Names()
    for uri, item in items.items():
        if not item.path or names.of(item.metadata) != (False, None):  # it names something
            continue
        below = _folders_up(item.path, scan.roots)[:-1]  # never the source folder's name
        name = " ".join(below[-1].replace("_", " ").split()) if below else ""
        if any(c.isalpha() for c in name):
            items[uri] = item.with_metadata({"vernacularName": name})
            named[name] += 1
    if named:
        scan.notes.append(f"no folder is named for a species; named "
                          f"{_photos(sum(named.values()))} by their folders as common names: "
                          f"{_shown(named)}")  # fmt: skip
    return bool(named)


def _shown(named: Counter[str]) -> str:
    shown = ", ".join(f"{name} ({count})" for name, count in named.most_common(5))
    return (shown or "none") + (f" and {len(named) - 5} more" if len(named) > 5 else "")


def _folders_up(path: str, roots: Sequence[str]) -> list[str]:
    """The names of a photo's folders, nearest first, up to the source folder it was found
    in (that one included; never above it); only its own for a photo a list named."""
    parent = os.path.dirname(path)
    root = max((r for r in roots if r.endswith(os.sep) and path.startswith(r)), key=len,
               default=None)  # fmt: skip
    names = [os.path.basename(parent)]
    while root is not None and len(parent) > len(root.rstrip(os.sep)):
        parent, below = os.path.dirname(parent), parent
        if parent == below:  # the filesystem's root
            break
        names.append(os.path.basename(parent))
    return [name for name in names if name] or [os.sep]


def _photos(count: int) -> str:
    return f"{count} photo" if count == 1 else f"{count} photos"


def _unread_sidecars(folder: Path) -> list[str]:
    """A hint for each camera-trap metadata file at a folder's top that the run does not
    read unless told: SpeciesNet's instances.json beside the photos held their places."""
    from bioindex.indexer.cococt import looks_like
    from bioindex.indexer.speciesnet import is_speciesnet

    hints = []
    for file in sorted(folder.glob("*.json"))[:20]:
        kind = ("SpeciesNet" if is_speciesnet(file) else "COCO Camera Traps"
                if looks_like(file) else None)  # fmt: skip
        if kind:
            hints.append(f"{file} looks like a {kind} file; its places and names are read "
                         f"only with --metadata {file}")  # fmt: skip
    return hints


def _delimiter(file: Path) -> str:
    with open(file, "rb") as raw:
        header = raw.read(65536).split(b"\n", 1)[0].decode("utf-8", "replace")
    return delimiter(header)


def _uri_column(columns: Sequence[str], path: Path) -> str:
    lowered = {c.lower().split(":")[-1]: c for c in columns}
    for name in _URI_COLUMNS:
        if name in lowered:
            return lowered[name]
    raise BioindexError(f"{path} needs a column naming the images ({', '.join(_URI_COLUMNS)})")


def read_table(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """A sidecar: metadata rows keyed by their file column (relative path or file name),
    from a table or a SpeciesNet instances or predictions file (.json)."""
    file = Path(path)
    if file.suffix.lower() == ".json":
        if not file.is_file():
            raise BioindexError(f"metadata file {path} does not exist")
        return dict(jsonlists.listed(file))
    rows = iter_table_rows(path)
    out: dict[str, dict[str, Any]] = {}
    key = None
    for row in rows:
        key = key or _uri_column(list(row), file)
        out[str(row[key])] = {k: v for k, v in row.items() if k != key}
    return out


def _scan_manifest(path: Path, kind: str, media_root: Any, items: dict[str, Item], scan: Scan,
                   anywhere: bool) -> None:  # fmt: skip
    listed: Iterable[tuple[str, dict[str, Any]]]
    if kind == "camtrap-dp":
        from bioindex.indexer import camtrapdp

        file = camtrapdp.package_file(path)
        if file is None:
            raise BioindexError(f"{path} is not a Camera Trap Data Package (a folder with a "
                                f"datapackage.json whose profile is camtrap-dp)")  # fmt: skip
        package = camtrapdp.read(file)
        listed, path = package.photos, file
        if package.videos:
            scan.unread["video (Camtrap DP media)"] += package.videos
    else:
        listed = listed_media(path, kind)
    base = _media_base(media_root, path.parent)
    local, missing = 0, 0
    for value, metadata in listed:
        item = _add_media(value, base, metadata, items, scan, anywhere)
        if item is not None and item.path:  # a local file (a URL's path is "")
            local += 1
            missing += item.size is None
    if local and missing == local:  # paths relative to some other folder: one hint, not N
        hint = ("; or index the photos' folder with --metadata " + str(path)
                if kind in JSON_LISTS else "")  # fmt: skip
        scan.warnings.append(f"none of the {local} files {path.name} lists is under {base}: "
                             f"give --media-root (the folder its paths start from){hint}")


def listed_media(path: Path, kind: str = "manifest") -> Iterator[tuple[str, dict[str, Any]]]:
    """(media path or URL, its metadata) for each row of a manifest table or entry of a
    SpeciesNet file."""
    if kind in JSON_LISTS:
        yield from jsonlists.listed(path)
        return
    key = None
    for row in iter_table_rows(path):
        key = key or _uri_column(list(row), path)
        value = str(row.get(key) or "").strip()
        if value:
            yield value, {k: v for k, v in row.items() if k != key and v not in (None, "")}


def _media_base(media_root: Any, default: Path) -> Path | str:
    """Where a list's relative media paths are found: a folder, or a URL (ending in /)
    when the photos are on a web server or in a bucket (LILA's)."""
    if media_root and is_remote(str(media_root)):
        return str(media_root).rstrip("/") + "/"
    return Path(media_root).expanduser().resolve() if media_root else default


def _add_media(value: str, base: Path | str, metadata: dict[str, Any], items: dict[str, Item],
               scan: Scan, anywhere: bool) -> Item | None:  # fmt: skip
    try:
        item = _media_item(value, base, metadata, anywhere)
    except RefusedMedia as exc:
        scan.failures.append((value, "read", exc.message))
        return None
    return items.setdefault(item.uri, item)


class RefusedMedia(BioindexError):
    """A media entry of a manifest or archive that is not read: a path leading out of its
    folder, or a URL scheme other than http, https and file."""


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def _media_item(value: str, base: Path | str, metadata: dict[str, Any],
                anywhere: bool = False) -> Item:  # fmt: skip
    """A URL (fetched later) or a path inside `base` (anywhere only when the user says so:
    a stranger's manifest must not make us read /etc/passwd or ~/.ssh). A `base` that is a
    URL (ending in /) makes each relative path a URL under it."""
    if is_remote(value):
        return Item(value, "", None, None, metadata)
    if value.startswith("file://"):
        value = value[len("file://") :]
    elif _SCHEME.match(value):
        raise RefusedMedia(f"refused: {_SCHEME.match(value)[1]}:// URLs are not fetched "
                           f"(http and https only)")  # fmt: skip
    if isinstance(base, str):
        return Item(_url_under(value, base, anywhere), "", None, None, metadata)
    file, found = _real_file(os.path.join(base, value))
    if not anywhere and not _within(file, _real_dir(str(base))):
        raise RefusedMedia(f"refused: {value} is outside {base}; give --media-root, or "
                          f"--allow-outside-paths to read paths wherever they point")
    if found is None:  # missing local media is a per-image failure (at read time), not fatal
        return Item(file, file, None, None, metadata)
    return Item(file, file, found.st_size, found.st_mtime, metadata)


def _url_under(value: str, base: str, anywhere: bool) -> str:
    """A listed path as a URL under `base` (LILA's `file_name`s under its bucket's
    folder); a path climbing out of it ('../', '/etc/…') is refused like a local one."""
    url = urllib.parse.urljoin(base, urllib.parse.quote(value.replace("\\", "/"), safe="/"))
    if not anywhere and not url.startswith(base):
        raise RefusedMedia(f"refused: {value} is outside {base}; give --allow-outside-paths "
                           f"to fetch paths wherever they point")  # fmt: skip
    return url


def _real_file(path: str) -> tuple[str, os.stat_result | None]:
    """A path with every symlink and '..' resolved, as realpath gives it, and its stat
    (None when missing). Its folder's real path is looked up once per folder: resolving
    each of a 1M-row manifest's paths whole was 10M lstat calls, 120 of a 150 s scan."""
    folder, name = os.path.split(path)
    if name in ("", ".", ".."):
        real = os.path.realpath(path)
    else:
        real = os.path.join(_real_dir(folder), name)
    try:
        found = os.lstat(real)
        if stat.S_ISLNK(found.st_mode):  # the file itself is a link: where it leads
            real = os.path.realpath(real)
            found = os.stat(real)
    except OSError:
        return real, None
    return real, found


@functools.lru_cache(maxsize=1 << 16)
def _real_dir(folder: str) -> str:
    return os.path.realpath(folder)


def _within(path: str, folder: str) -> bool:
    """Whether a real path is `folder` or under it, compared as text (both resolved):
    pathlib's is_relative_to parsed both paths again for every row, a quarter of a listing."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


# ---- Darwin Core Archives ------------------------------------------------------------


def _scan_archive(path: Path, media_root: Any, items: dict[str, Item], scan: Scan,
                  anywhere: bool) -> None:  # fmt: skip
    from bioindex.indexer.dwca import Archive

    base = _media_base(media_root, path if path.is_dir() else path.parent)
    scan.archives.append(str(path))
    if path.is_file():
        scan.roots.append(f"{path}#")  # its members, when it holds images
    with Archive(path) as archive:
        if archive.media_extension() is not None:
            local: list[tuple[str, str | None, dict[str, Any]]] = []  # uri, member, row
            for occurrence in archive.occurrences():
                terms = dict(occurrence.terms)
                terms.setdefault("occurrenceID", occurrence.core_id)
                for media in occurrence.media:
                    uri = media.pop("_media_uri")
                    # The image's own licence/creator/rights holder override the record's.
                    metadata = {**terms,
                                **{k: v for k, v in media.items() if k in _MEDIA_TERMS}}
                    metadata["mediaIdentifier"] = uri
                    if _names_a_manifest(media):  # CETAF: a IIIF manifest per specimen
                        item = Item(uri, "", None, None, metadata, fetch_via=iiif.MANIFEST)
                        items.setdefault(uri, item)
                        continue
                    local.append((uri, None if is_remote(uri) else archive.member_name(uri),
                                  metadata))  # fmt: skip
            named = {name for _, name, _ in local if name}
            inside, refused = zip_members(path, named) if path.is_file() else ({}, {})
            for uri, name, metadata in local:
                if name in inside:  # an image inside the zip, read in place
                    item = inside[name]
                    items.setdefault(item.uri, replace(item, metadata=metadata))
                elif name in refused:
                    scan.failures.append((f"{path}#{name}", "read", refused[name]))
                else:
                    _add_media(uri, base, metadata, items, scan, anywhere)
        scan.warnings.extend(archive.warnings)


def zip_members(path: Path, only: Container[str] | None = None, any_name: bool = True,
                ) -> tuple[dict[str, Item], dict[str, str]]:  # fmt: skip
    """The members of a zip (or those of `only`) by name, each read in place, whatever its
    name ends with unless not `any_name` (a Darwin Core Archive's multimedia rows say which
    are images); and why others cannot be, by name."""
    from bioindex.indexer.zipped import image_members

    members, refused = image_members(path, any_name=any_name, only=only)
    mtime = path.stat().st_mtime
    return ({m.name: Item(f"{path}#{m.name}", str(path), m.size, mtime, {}, m.offset, m.packed,
                          method=m.method) for m in members}, dict(refused))  # fmt: skip


def _names_a_manifest(media: dict[str, str]) -> bool:
    expectation = media.get("serviceExpectation", "").strip().upper()
    kind = media.get("format", "").strip().lower()
    return expectation == "IIIF" or kind in ("application/ld+json", "application/json")


def occurrence_records(archive_path: str) -> Iterator[dict[str, Any]]:
    """Every occurrence record of an archive as a catalog row, streamed. Keys that repeat
    are told apart by the store (see Store.upsert_occurrences)."""
    from bioindex.indexer.dwca import Archive

    with Archive(archive_path) as archive:
        for occurrence in archive.rows(archive.core):
            key, terms = occurrence
            core_id = key or terms.get("occurrenceID") or ""
            terms.setdefault("occurrenceID", core_id)
            yield {"core_id": core_id, "source": archive_path, **terms}
        for warning in archive.warnings:  # the scan did not read the rows of this archive
            if archive.media_extension() is None:
                log.warning("%s", warning)


_MEDIA_TERMS = ("license", "creator", "rightsHolder", "rights", "format", "title", "references")


# ---- IIIF manifests and collections --------------------------------------------------


def _scan_iiif(source: str, items: dict[str, Item], policy: FetchPolicy) -> None:
    """Every canvas of a manifest, or of every manifest a collection lists (at any depth,
    each document read once)."""
    pending, seen = [source], set()
    while pending and len(seen) < iiif.MAX_MANIFESTS:
        location = pending.pop(0)
        if location in seen:
            continue
        seen.add(location)
        document = iiif.read_manifest(location, policy)
        if iiif.is_collection(document):
            manifests, collections = iiif.members(document)
            pending.extend(manifests + collections)
            continue
        shared = iiif.manifest_metadata(document)
        for canvas in iiif.canvases(document):
            metadata = {**shared, "iiifCanvas": canvas.id}
            if canvas.label:
                metadata["canvasLabel"] = canvas.label
            item = Item(canvas.id, "", None, None, metadata, fetch_via=canvas.fetch_via)
            items.setdefault(item.uri, item)


# ---- webdataset tar shards -------------------------------------------------------------


def expand_shards(pattern: str) -> list[str]:
    from braceexpand import braceexpand

    return list(braceexpand(pattern))


def _scan_shards(pattern: str, items: dict[str, Item], scan: Scan) -> None:
    shards = expand_shards(pattern)
    missing = [s for s in shards if not Path(s).expanduser().is_file()]
    if missing:
        raise BioindexError(f"shard {missing[0]} does not exist ({len(missing)} of "
                            f"{len(shards)} named by {pattern} are missing)")  # fmt: skip
    for shard in shards:
        path = Path(shard).expanduser().resolve()
        scan.roots.append(str(path) + "#")
        for item, failure in _shard_items(path):
            if failure is not None:
                scan.failures.append(failure)
            else:
                items.setdefault(item.uri, item)


def shard_images(path: Path) -> list[Item]:
    """The images of one webdataset tar shard (a truncated shard: those before the break)."""
    return [item for item, _ in _shard_items(path) if item is not None]


def _shard_items(path: Path) -> Iterator[tuple[Item | None, tuple[str, str, str] | None]]:
    """Group tar members into samples by webdataset's key rule (name up to the first dot)."""
    mtime = path.stat().st_mtime
    samples: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                directory, _, base = member.name.rpartition("/")
                key, _, extension = base.partition(".")
                key = f"{directory}/{key}" if directory else key
                if key not in samples:
                    samples[key] = {}
                    order.append(key)
                extension = extension.lower()
                if extension in _SHARD_IMAGE_KEYS:
                    samples[key]["_image"] = (member.offset_data, member.size)
                elif extension.endswith("txt") or extension in ("cls", "json"):
                    handle = tar.extractfile(member)
                    text = handle.read().decode("utf-8", "replace").strip() if handle else ""
                    samples[key][extension] = text
    except (tarfile.TarError, EOFError, OSError) as exc:
        # A truncated shard: keep the samples read so far, record where it broke.
        yield None, (f"{path}#{order[-1] if order else ''}", "read", f"tar: {exc}")
        if order:
            samples.pop(order.pop(), None)
    for key in order:
        sample = samples.get(key, {})
        if "_image" not in sample:
            continue
        offset, size = sample["_image"]
        if (shown := _shown_name(key)) is not None:
            yield None, (f"{path}#{shown}", "read", NOT_UTF8)
            continue
        metadata = tree_of_life_metadata(sample)
        item = Item(f"{path}#{key}", str(path), size, mtime, metadata, offset=offset)
        yield item, None


def tree_of_life_metadata(sample: dict[str, str]) -> dict[str, Any]:
    """Darwin Core fields from TreeOfLife-10M text keys; ranks only when all seven are given."""
    metadata: dict[str, Any] = {}
    taxonomic = sample.get("taxonomic_name.txt", "")
    words = taxonomic.split()
    if len(words) == 7:
        for rank, value in zip(("kingdom", "phylum", "class", "order", "family", "genus",
                                "specificEpithet"), words):  # fmt: skip
            metadata[rank] = value
        metadata["scientificName"] = f"{words[5]} {words[6]}"
    elif taxonomic:
        metadata["taxonomic_name"] = taxonomic  # positions unknown: kept, not guessed
    if sample.get("scientific_name.txt"):
        metadata["scientificName"] = sample["scientific_name.txt"]
    if sample.get("common_name.txt"):
        metadata["vernacularName"] = sample["common_name.txt"]
    for key in ("sci.txt", "com.txt", "taxon.txt", "taxonTag.txt", "sci_com.txt",
                "taxon_com.txt"):  # fmt: skip
        if sample.get(key) or sample.get(key.lower()):
            metadata[key[:-4]] = sample.get(key) or sample.get(key.lower())
    return metadata


# ---- folders ---------------------------------------------------------------------------


class Sidecar:
    """The --metadata rows, claimed by the files they name: by path under the source, by
    absolute path, or by file name alone. A row whose path is from elsewhere — SpeciesNet
    writes the path its run was given, `test_data/african_elephants.jpg` or
    `/mnt/card/cam1/IMG_0001.JPG` — is paired after the scan with the file still without a
    row whose path under the source ends its path (camera traps repeat file names on every
    card: `cam1/IMG_0001.JPG`, `cam2/IMG_0001.JPG`), else with the one such file bearing its
    name, when no other unclaimed row bears that name too."""

    def __init__(self, rows: dict[str, dict[str, Any]]):
        self.rows = rows
        self.claimed: set[str] = set()
        self.missed: dict[str, list[str]] = {}  # file name → uris of files with no row
        self.missed_paths: dict[str, list[str]] = {}  # path under its source → those uris

    def row(self, relative: str, uri: str) -> dict[str, Any]:
        name = relative.rsplit("/", 1)[-1]
        key = next((k for k in (relative, uri, name) if k in self.rows), None)
        if key is None:
            if self.rows:
                self.missed.setdefault(name, []).append(uri)
                self.missed_paths.setdefault(relative, []).append(uri)
            return {}
        self.claimed.add(key)
        return dict(self.rows[key])

    def pair_by_name(self, items: dict[str, Item]) -> None:
        """Give each file still without a row the unclaimed row its path ends, else the one
        bearing its name."""
        given: set[str] = set()
        for key in self.unclaimed():
            parts = [p for p in key.replace("\\", "/").split("/") if p not in ("", ".")]
            for start in range(1, len(parts) - 1):  # the longest tail of two parts or more
                uris = self.missed_paths.get("/".join(parts[start:]), [])
                if len(uris) == 1 and uris[0] not in given:
                    self._give(items, uris[0], key, given)
                    break
        unclaimed = Counter(_name(key) for key in self.unclaimed())
        for key in self.unclaimed():
            uris = [u for u in self.missed.get(_name(key), []) if u not in given]
            if unclaimed[_name(key)] == 1 and len(uris) == 1:
                self._give(items, uris[0], key, given)

    def _give(self, items: dict[str, Item], uri: str, key: str, given: set[str]) -> None:
        items[uri] = replace(items[uri], metadata=dict(self.rows[key]))
        self.claimed.add(key)
        given.add(uri)

    def unclaimed(self) -> list[str]:
        return [key for key in self.rows if key not in self.claimed]


def _name(path: str) -> str:
    return path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def _file_item(file: Path, root: Path, sidecar: Sidecar) -> Item:
    stat = file.stat()
    metadata = sidecar.row(file.relative_to(root).as_posix(), str(file))
    return Item(uri=str(file), path=str(file), size=stat.st_size, mtime=stat.st_mtime,
                metadata=metadata)  # fmt: skip


def _scan_zip(path: Path, items: dict[str, Item], scan: Scan, sidecar: Sidecar) -> None:
    found, refused = zip_photos(path, sidecar)
    scan.roots.append(f"{path}#")
    for item in found:
        items.setdefault(item.uri, item)
    scan.failures.extend(refused)


def zip_photos(path: Path, sidecar: Sidecar | None = None,
               ) -> tuple[list[Item], list[tuple[str, str, str]]]:  # fmt: skip
    """The photos of a zip that is not a Darwin Core Archive, each read in place (with its
    --metadata row, by its path in the zip or its name), and (uri, stage, error) for those
    that cannot be."""
    members, refused = zip_members(path, any_name=False)
    sidecar = sidecar or Sidecar({})
    found = [replace(item, metadata=sidecar.row(name, item.uri))
             for name, item in members.items()]  # fmt: skip
    return found, [(f"{path}#{name}", "read", reason) for name, reason in refused.items()]
