"""One writer per store: an OS lock (flock) on STORE/writer.lock.

The lock dies with its process (kill -9 included), so a crashed writer never leaves a stale
lock behind. The holder writes who it is into the file, for the one-line refusal others get.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sys
import time
from pathlib import Path

from bioindex.errors import BioindexError
from bioindex.store.layout import LOCK_FILE

log = logging.getLogger(__name__)


class WriterLock:
    """Held from `acquire` until `release` (or the process's end)."""

    def __init__(self, root: Path):
        self.path = root / LOCK_FILE
        self._fd: int | None = None
        self._registered = False

    def acquire(self, wait: bool | float = False) -> None:
        """Take the lock; `wait` True waits as long as it takes, a number waits that many
        seconds; otherwise a held lock is a BioindexError naming the holder."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = None if wait is True else time.monotonic() + float(wait or 0)
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    holder = _holder(fd)
                    os.close(fd)
                    raise BioindexError(
                        f"store {self.path.parent} is being written by {holder}; wait for it "
                        f"to finish or pass --wait"
                    ) from None
                if not told:
                    log.warning("waiting for %s to finish writing %s", _holder(fd),
                                self.path.parent)  # fmt: skip
                    told = True
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "since": time.time(),
                                  "command": " ".join(sys.argv[:3])}).encode(), 0)  # fmt: skip
        self._fd = fd
        if not self._registered:
            # Forked children (decode workers) share the lock's open file; were they to keep
            # it, a killed writer's lock would outlive it until they notice and exit.
            os.register_at_fork(after_in_child=self._drop_in_child)
            self._registered = True

    def _drop_in_child(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    since = time.strftime("%H:%M:%S", time.localtime(info.get("since", 0)))
    command = f" ({info['command']})" if info.get("command") else ""
    return f"process {info.get('pid')}{command} since {since}"
