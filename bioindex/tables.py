"""Tables as curators keep them: what separates a CSV's fields, and the rows of an Excel
workbook."""

from __future__ import annotations

import csv
import datetime as dt
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bioindex.errors import BioindexError

SEPARATORS = "\t,;"
WORKBOOK_SUFFIXES = (".xlsx", ".xlsm")


def delimiter(header: str) -> str:
    """The separator a table's header line uses most: a tab, a comma, or the semicolon Excel
    writes where the comma is the decimal mark (German, French, Dutch, … settings). Read
    with commas, a semicolon file was one column ("needs a column naming the images",
    though it had one). A header with none of them (one column) gives the tab."""
    return max(SEPARATORS, key=header.count)


def workbook_rows(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of a workbook's first sheet as dicts keyed by its first row, streamed;
    values as a CSV export would write them (a whole number without ".0", a date as ISO
    8601, a date at midnight as the date alone). Before, an .xlsx given as --metadata was
    "line 1 is not UTF-8 text"."""
    import openpyxl

    from bioindex.indexer.zipped import DAMAGED, refuse_bombs

    try:
        with zipfile.ZipFile(path) as archive:  # a workbook is a zip: no bombs
            refuse_bombs(archive, path)
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (*DAMAGED, KeyError) as exc:
        raise BioindexError(f"{path} is not a readable Excel workbook ({exc})") from None
    try:
        rows = book.worksheets[0].iter_rows(values_only=True) if book.worksheets else iter(())
        header = next(rows, None)
        if header is None:
            return
        names = [_cell(v) or f"column {i + 1}" for i, v in enumerate(header)]
        for values in rows:
            if values is None or all(v is None for v in values):
                continue
            yield {name: _cell(value) for name, value in zip(names, values)}
    finally:
        book.close()


def workbook_text(path: Path) -> str:
    """A workbook's first sheet as tab-separated text (a checklist read as a table is)."""
    out = io.StringIO()
    writer: Any = None
    for row in workbook_rows(path):
        if writer is None:
            writer = csv.DictWriter(out, fieldnames=list(row), dialect="excel-tab")
            writer.writeheader()
        writer.writerow(row)
    return out.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dt.datetime):
        return value.date().isoformat() if value.time() == dt.time() else value.isoformat()
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    return str(value).strip()


def table_rows(table: Path) -> tuple[list[str], list[dict[str, str]]]:
    """A table's columns and rows: a CSV/TSV (by its header's separator) or the first sheet
    of an Excel workbook. Raises UnicodeDecodeError / csv.Error for what is neither."""
    if table.suffix.lower() in WORKBOOK_SUFFIXES:
        rows = list(workbook_rows(table))
        return (list(rows[0]) if rows else []), rows
    with open(table, newline="", encoding="utf-8-sig") as handle:
        header = handle.readline()
        handle.seek(0)
        reader = csv.DictReader(handle, dialect="excel", delimiter=delimiter(header))
        rows = list(reader)
        return list(reader.fieldnames or ()), rows
