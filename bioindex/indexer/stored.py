"""An indexed image's bytes again, found by its catalog row (thumbnails, exported media).

A row's uri is a local file, a member of the zip or tar it was indexed from
(`container#member`), or a URL whose download the store keeps in media-cache/. A member is
read in place, by a table of where each member of its container lies, made once per
version of the container (a tar has no table of its own: reading one member by name used to
read every header before it).
"""

from __future__ import annotations

import io
import mimetypes
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bioindex.indexer.remote import MediaCache
from bioindex.indexer.sources import Item, shard_images, zip_members
from bioindex.uris import is_remote, member_of

CONTAINERS_KEPT = 16  # member tables of the latest containers read


class _Tables:
    """Member tables ({member: Item}) of containers, by (path, size, mtime): a container
    that changed is read again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: OrderedDict[tuple, dict[str, Item]] = OrderedDict()

    def members(self, container: Path) -> dict[str, Item]:
        info = container.stat()
        key = (str(container), info.st_size, info.st_mtime_ns)
        with self._lock:
            if key in self._kept:
                self._kept.move_to_end(key)
                return self._kept[key]
        if container.suffix.lower() == ".tar":
            # By member_of, as rows are looked up: the shard's own folder may hold a '#'.
            table = {member_of(item.uri)[1]: item for item in shard_images(container)}
        else:  # any member: a Darwin Core Archive's images need no extension
            table = zip_members(container)[0]
        with self._lock:
            self._kept[key] = table
            while len(self._kept) > CONTAINERS_KEPT:
                self._kept.popitem(last=False)
        return table


_TABLES = _Tables()


def archived(row: Mapping[str, Any]) -> Item | None:
    """Where an image indexed from inside a zip or tar lies in it now, or None: not such an
    image, or its member is gone or no longer the size it was indexed at."""
    inside = member_of(str(row["uri"]))
    if inside is None:
        return None
    container, member = inside
    try:
        item = _TABLES.members(Path(container)).get(member)
    except Exception:  # a stranger's file: whatever it does, the image is just not there
        return None
    size = row.get("size")
    return None if item is None or (size is not None and item.size != size) else item


HEAD_BYTES = 1 << 14  # enough of a file for Pillow to name its format
_JPEG = b"\xff\xd8\xff"  # nearly every shard member: told without Pillow's header parse


def image_format(row: Mapping[str, Any]) -> tuple[str, str] | None:
    """(MIME type, file suffix) of a local or archived image, from its first bytes: a
    webdataset member's name ("000123") carries none. None when unreadable or unknown."""
    from PIL import Image

    uri = str(row["uri"])
    item = archived(row) if member_of(uri) is not None else Item(uri, uri, None, None)
    try:
        head = item.read_head(HEAD_BYTES) if item is not None else b""
        if head.startswith(_JPEG):
            return "image/jpeg", ".jpg"
        with Image.open(io.BytesIO(head)) as image:
            mime = image.get_format_mimetype()
    except Exception:  # a stranger's file: it just keeps no format
        return None
    return (mime, mimetypes.guess_extension(mime) or "") if mime else None


def image_bytes(store_root: str | os.PathLike[str], row: Mapping[str, Any]) -> bytes | None:
    """The bytes of the image a catalog row names, or None where they are no longer there
    (gone, unreadable, or not the size it was indexed at)."""
    uri = str(row["uri"])
    try:
        if is_remote(uri):
            cached = MediaCache(Path(store_root) / "media-cache").cached(uri)
            return cached.read_bytes() if cached else None
        if member_of(uri) is not None:
            item = archived(row)
            return item.read_bytes() if item is not None else None
        return Item(uri, uri, row.get("size"), row.get("mtime")).read_bytes()
    except OSError:
        return None
