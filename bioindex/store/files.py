"""Durable file writes and file identity (size, checksum, quick fingerprint).

Every data file is written under a temporary name, fsynced, renamed into place, and its
directory fsynced, so a crash or power loss leaves either no file or the whole file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bioindex.errors import BioindexError

TMP_SUFFIX = ".tmp"
_EDGE = 64 * 1024  # bytes read from each end of a file for its quick fingerprint


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's entry list: renames into it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: Path, path: Path) -> None:
    """Move a fully written, fsynced temporary file into place, durably."""
    os.replace(tmp, path)
    fsync_path(path.parent)


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with disk_errors(path):
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        publish(tmp, path)


def create_exclusive(path: Path, text: str) -> bool:
    """Write `text` to `path` only if no file is there (O_EXCL); False when one was."""
    with disk_errors(path):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, text.encode())
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)
        fsync_path(path.parent)
        return True


def save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with disk_errors(path):
        with open(tmp, "wb") as handle:
            np.save(handle, array)
            handle.flush()
            os.fsync(handle.fileno())
        publish(tmp, path)


def identity(path: Path, full: bool = True) -> dict[str, Any]:
    """size, quick fingerprint and (with `full`) sha256 of a file, for the snapshot."""
    out: dict[str, Any] = {"size": path.stat().st_size, "quick": fingerprint(path)}
    if full:
        out["sha256"] = sha256(path)
    return out


def sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def fingerprint(path: Path) -> str:
    """A hash of a file's size and its first and last 64 KB: O(1) to check, and it tells a
    file from any other of the same size that bioindex writes (headers differ, data differ)."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(_EDGE))
        if size > _EDGE:
            handle.seek(max(_EDGE, size - _EDGE))
            digest.update(handle.read(_EDGE))
    return digest.hexdigest()[:32]


def tree_size(root: Path) -> int:
    """Bytes in the files under `root`, counting what is there while a writer adds, renames
    and deletes files beside the count (a file listed and gone by its stat is not there)."""
    total = 0
    for directory, _, names in os.walk(root):
        for name in names:
            try:
                found = os.stat(os.path.join(directory, name), follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(found.st_mode):
                total += found.st_size
    return total


def problem(path: Path, record: dict[str, Any], full: bool = False) -> str | None:
    """What is wrong with a data file against its record, or None when it checks out."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if size != record.get("size"):
        return f"{size} bytes, expected {record.get('size')}"
    try:
        if record.get("quick") and fingerprint(path) != record["quick"]:
            return "content differs from what was written (replaced or corrupt)"
        if full and record.get("sha256") and sha256(path) != record["sha256"]:
            return "checksum mismatch (corrupt)"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    return None


@contextlib.contextmanager
def disk_errors(path: Path) -> Iterator[None]:
    """OS errors of a write as one-line BioindexErrors (disk full, permissions, read-only)."""
    try:
        yield
    except OSError as exc:
        raise BioindexError(describe_os_error(exc, path)) from exc


def describe_os_error(exc: OSError, path: Path | str) -> str:
    if exc.errno == errno.ENOSPC:
        return f"disk full while writing {path}; free some space and rerun (nothing was lost)"
    if exc.errno == errno.EDQUOT:
        return f"disk quota exceeded while writing {path}; nothing was lost"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied writing {path}"
    if exc.errno == errno.EROFS:
        return f"{path} is on a read-only file system"
    return f"cannot write {path}: {exc.strerror or exc}"

