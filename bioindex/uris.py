"""What a catalog row's uri names: a local file, a member of a zip or tar
(`container#member`), or a URL."""

from __future__ import annotations

import os
from pathlib import PurePosixPath


def is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def member_of(uri: str) -> tuple[str, str] | None:
    """(container, member) of a uri naming a member of a zip or tar, or None. A '#' alone
    does not make one: "specimen #12.jpg" is a file, and a zip's folder or member may
    hold a '#' too, so the container is the first prefix before a '#' that ends in .zip
    or .tar."""
    at = uri.find("#")
    while at != -1:
        if uri[:at].lower().endswith((".zip", ".tar")):
            return uri[:at], uri[at + 1 :]
        at = uri.find("#", at + 1)
    return None


def file_gone(uri: str) -> bool:
    """Whether the local file (or archive) a uri names is no longer where it was indexed: a
    photo moved or deleted since. A URL is never called gone (one request each would be
    the price of knowing)."""
    if is_remote(uri):
        return False
    member = member_of(uri)
    return not os.path.exists(member[0] if member is not None else uri)


def suffix_of(uri: str) -> str:
    """The lower-case suffix of what a uri names (".jp2"): a member's own, a URL's path's."""
    member = member_of(uri)
    name = member[1] if member is not None else uri.split("?")[0] if is_remote(uri) else uri
    return PurePosixPath(name).suffix.lower()
