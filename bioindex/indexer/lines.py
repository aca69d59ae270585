"""Lines of a text table from a stranger: counted, bounded, decoded strictly.

A table with one endless line (a zip bomb's favourite) is refused before it fills the
memory, and a byte that is not in the declared encoding is reported with its line number,
not as a traceback.
"""

from __future__ import annotations

import codecs
import io
from collections.abc import Iterator
from typing import Any, BinaryIO

from bioindex.errors import BioindexError

LINE_LIMIT = 16 << 20
# Encodings whose lines end in the byte b"\n": read a line at a time, so a byte that does not
# decode is reported on its own line.
_BYTE_LINES = {"utf-8", "utf-8-sig", "ascii", "latin-1", "iso8859-15", "cp1252", "cp1250",
               "mac-roman"}


class Lines:
    """The lines of one file, counted, none longer than LINE_LIMIT characters (a bomb of
    one endless line is refused before it fills the memory)."""

    def __init__(self, name: str):
        self.name = name
        self.number = 0

    def of(self, raw: BinaryIO, encoding: str) -> Iterator[str]:
        if codecs.lookup(encoding).name not in _BYTE_LINES:  # UTF-16 and kin: no b"\n" lines
            stream: Any = io.TextIOWrapper(raw, encoding=encoding, newline="")
            decode = str
        else:
            stream, decode = raw, codecs.getdecoder(encoding)
        while line := stream.readline(LINE_LIMIT + 1):
            self.number += 1
            if len(line) > LINE_LIMIT:
                raise BioindexError(f"{self.name}: line {self.number} is longer than "
                                    f"{LINE_LIMIT >> 20} MiB")  # fmt: skip
            yield line if decode is str else decode(line)[0]
