"""Zip files from strangers: bomb checks, where a member's bytes lie, and the photos of a zip
that is not a Darwin Core Archive (a camera trap's download, a folder zipped to be sent).

A member is read in place, as a tar member is (sources.Item: offset, and its compressed length
and method when compressed: deflate, or bzip2 and LZMA as 7-Zip can write them), so a decode
worker needs no zipfile of its own.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from bioindex.errors import BioindexError
from bioindex.images import IMAGE_EXTENSIONS

# A member that inflates more than this many times, beyond a size any real file in a small
# zip reaches, is a bomb. Darwin Core text compresses 5-20x; JPEGs hardly at all.
MAX_RATIO = 200
RATIO_FREE_BYTES = 64 << 20
_ENCRYPTED = 0x1
READ_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
# What zipfile raises on a damaged zip besides BadZipFile: a mangled header's "version
# 15.3" (NotImplementedError), a name that is not UTF-8 (ValueError), a short field.
DAMAGED = (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, IndexError,
           ValueError, struct.error)
# And reading a member of one: a bad CRC, deflate data that does not inflate, a member
# marked encrypted (RuntimeError), a seek to where no byte is.
UNREADABLE_MEMBER = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError,
                     RuntimeError, OSError)


@dataclass(frozen=True)
class Member:
    name: str
    offset: int  # where its bytes start in the zip file
    packed: int | None  # its compressed length; None: stored as is
    size: int  # its length once unpacked
    method: int = zipfile.ZIP_DEFLATED  # how it is compressed (zipfile.ZIP_*)


def refuse_bombs(archive: zipfile.ZipFile, path: Path) -> None:
    for info in archive.infolist():
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_FREE_BYTES and ratio > MAX_RATIO:
            raise BioindexError(f"{path}: {info.filename} would expand {ratio:.0f}-fold to "
                                f"{info.file_size >> 20} MiB; refused as a zip bomb (real "
                                f"archives compress at most ~{MAX_RATIO // 10}-fold)")  # fmt: skip


def data_offset(handle: BinaryIO, info: zipfile.ZipInfo) -> int | None:
    """Where a member's (possibly deflated) bytes start: after its local header, whose name
    and extra fields may differ in length from the central directory's."""
    handle.seek(info.header_offset)
    header = handle.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        return None
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_length + extra_length


def holds_darwin_core(path: Path) -> bool:
    """Whether a zip is a Darwin Core Archive (meta.xml, or iDigBio's occurrence.csv, at its
    top or in its one folder) rather than a zip of files."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except DAMAGED as exc:
        raise BioindexError(f"{path} is not a readable zip file ({exc})") from None
    return any(PurePosixPath(n).name in ("meta.xml", "occurrence.csv") and n.count("/") <= 1
               for n in names if not n.startswith("__MACOSX/"))  # fmt: skip


def holds_data_package(path: Path) -> bool:
    """Whether a zip holds a data package descriptor (a Camtrap DP downloaded as a zip)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except DAMAGED:
        return False
    return any(PurePosixPath(n).name == "datapackage.json" and n.count("/") <= 1
               for n in names)  # fmt: skip


def image_members(path: Path, any_name: bool = False, only: Container[str] | None = None,
                  ) -> tuple[list[Member], list[tuple[str, str]]]:  # fmt: skip
    """The image members of a zip (by name), and (name, reason) for those that cannot be
    read in place: encrypted, or compressed by a method other than deflate, bzip2 or LZMA.
    `any_name`: every file member, whatever its name ends with (a Darwin Core Archive's
    multimedia table says which are images, and an exported one may name them without an
    extension); `only`: of those, only these names."""
    members: list[Member] = []
    refused: list[tuple[str, str]] = []
    try:
        with zipfile.ZipFile(path) as archive, open(path, "rb") as handle:
            refuse_bombs(archive, path)
            for info in archive.infolist():
                name = info.filename
                if only is not None and name not in only:
                    continue
                if (info.is_dir() or name.startswith("__MACOSX/") or not any_name
                        and PurePosixPath(name).suffix.lower() not in IMAGE_EXTENSIONS):
                    continue
                if info.flag_bits & _ENCRYPTED:
                    refused.append((name, "encrypted in the zip"))
                    continue
                if info.compress_type not in READ_METHODS:
                    refused.append((name, f"compressed by zip method {info.compress_type}; "
                                          f"unzip it and index the folder"))  # fmt: skip
                    continue
                offset = data_offset(handle, info)
                if offset is None:
                    refused.append((name, "its zip header is damaged"))
                    continue
                stored = info.compress_type == zipfile.ZIP_STORED
                members.append(Member(name, offset, None if stored else info.compress_size,
                                      info.file_size, info.compress_type))  # fmt: skip
    except DAMAGED as exc:
        raise BioindexError(f"{path} is not a readable zip file ({exc})") from None
    return members, refused
