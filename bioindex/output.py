"""How results look in a terminal: aligned tables that fit the width, JSON and CSV.

Every CLI command prints through `render` (rows) or `render_mapping` (one record), so the
look of the output is decided here only.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

FORMATS = ("table", "json", "csv")
# Columns whose start matters less than their end (a path's file name, not its folders).
_KEEP_END = ("path", "uri", "file")
_MIN_WIDTH = 14  # "catalog family", a date, a catalog number stay whole
# Control characters in a value (a newline in a file name, a terminal escape sequence) are
# shown escaped: a name could otherwise split its row and print a forged one, or restyle
# and rewrite the terminal. JSON and CSV quote them their own way.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# A CSV cell that starts like a formula is run as one by a spreadsheet (OWASP's "CSV
# injection"): a record's name "=HYPERLINK(…)" from someone else's archive would become a
# live link in a curator's Excel. Such cells get a leading apostrophe, which spreadsheets
# show as plain text; numbers (-12.5) are left as they are, and `csv_value` undoes it.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def render(rows: list[dict[str, Any]], fmt: str, columns: Sequence[str] | None = None,
           width: int | None = None) -> str:  # fmt: skip
    """Rows as an aligned table, JSON, or CSV.

    `columns` picks and orders the columns (None: every column any row has, in first-seen
    order). A table leaves out columns that are empty in every row and, when `width` is
    given, shortens its widest cells with "…" until each line fits."""
    if columns is not None:  # each asked-for column, so a CSV's header is what was asked
        rows = [{c: row.get(c) for c in columns} for row in rows]
    if fmt == "json":
        return json.dumps(rows, indent=2, default=str) + "\n"
    names = _columns(rows)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=names, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: _spreadsheet_text(v) for k, v in row.items()} for row in rows)
        return buffer.getvalue()
    if not rows:
        return "(no results)\n"
    names = [c for c in names if any(_cell(row.get(c)) for row in rows)]
    cells = [[_cell(row.get(c)) for c in names] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(names)]
    if width:
        widths = _fit(names, widths, width)
    lines = ["  ".join(_clip(c, w, c) for c, w in zip(names, widths)).rstrip()]
    lines += ["  ".join(_clip(v, w, c) for v, c, w in zip(r, names, widths)).rstrip()
              for r in cells]  # fmt: skip
    return "\n".join(lines) + "\n"


def absent_columns(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None
                   ) -> list[str]:  # fmt: skip
    """Which of `columns` no row has a value in (a misspelt name, or a field these results
    never fill): printed as blanks, they would look like missing data."""
    if not rows or columns is None:
        return []
    return [c for c in columns if all(row.get(c) in (None, "") for row in rows)]


def _spreadsheet_text(value: Any) -> Any:
    # Apostrophes already there count too, so that csv_value gives back exactly what was.
    if not isinstance(value, str) or not value.lstrip("'").startswith(_FORMULA_START):
        return value
    try:
        float(value)
    except ValueError:
        return "'" + value
    return value


def csv_value(text: str) -> str:
    """A cell of a CSV that `render` wrote, as the value it was (see _FORMULA_START)."""
    if text.startswith("'") and text.lstrip("'").startswith(_FORMULA_START):
        return text[1:]
    return text


def render_sections(
    sections: Sequence[tuple[str, list[dict[str, Any]]]], fmt: str,
    columns: Sequence[str] | None = None, width: int | None = None,
) -> str:  # fmt: skip
    """Several lists as one output: JSON and CSV hold every row, in order; a table gives
    each non-empty list its title and its own columns, so lists ranked by different
    measures are not read as one ranking."""
    present = [(title, rows) for title, rows in sections if rows]
    if fmt != "table" or len(present) < 2:
        return render([r for _, rows in sections for r in rows], fmt, columns, width)
    return "\n".join(f"{title}:\n{render(rows, fmt, columns, width)}" for title, rows in present)


ANSWER_KEYS = ("answer", "answer_rank", "answer_score", "band", "answer_note", "answer_basis")


def render_predictions(rows: list[dict[str, Any]], fmt: str,
                       columns: Sequence[str] | None = None, width: int | None = None,
                       ) -> str:  # fmt: skip
    """classify's rows: JSON and CSV hold every row (each with its file's answer); a table
    gives each file one answer line, then its candidates."""
    if fmt != "table" or columns is not None:
        return render(rows, fmt, columns, width)
    files: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        files.setdefault(str(row.get("file")), []).append(row)
    if not files:
        return "(no results)\n"
    parts = []
    for file, group in files.items():
        first = group[0]
        candidates = [{k: v for k, v in r.items() if k not in ANSWER_KEYS and k != "file"}
                      for r in group]  # fmt: skip
        parts.append(f"{printable(file)}: {printable(_answer(first))}\n"
                     f"{render(candidates, fmt, None, width)}")
    return "\n".join(parts)


def _answer(row: dict[str, Any]) -> str:
    band = row.get("band")
    if band is None:
        return "(no answer)"
    if band == "unknown":
        note = f"; {row['answer_note']}" if row.get("answer_note") else ""
        return f"unknown (no rank reaches the minimum confidence{note})"
    rank = f" ({row['answer_rank']})" if row.get("answer_rank") else ""
    said = [str(row[key]) for key in ("answer_note", "answer_basis") if row.get(key)]
    note = f" ({'; '.join(said)})" if said else ""
    return f"{row['answer']}{rank}, {band}, {float(row['answer_score']):.4f}{note}"


def render_mapping(data: dict[str, Any], fmt: str, width: int | None = None) -> str:
    """One record, key per line (empty values left out, long values wrapped to `width`),
    or JSON with its real types."""
    if fmt == "json":
        return json.dumps(data, indent=2, default=str) + "\n"
    shown = {k: v for k, v in data.items() if v not in (None, "", [], {})}
    keys = max((len(k) for k in shown), default=0)
    lines = []
    for key, value in shown.items():
        text = _value(value)
        if width and keys + 2 + len(text) > width:
            parts = textwrap.wrap(text, max(width - keys - 2, 20), break_on_hyphens=False)
            text = ("\n" + " " * (keys + 2)).join(parts)
        lines.append(f"{key:<{keys}}  {text}\n")
    return "".join(lines)


def terminal_width() -> int | None:
    """The width to fit tables to: the terminal's, or $COLUMNS; None when the output goes
    to a file or a pipe (it is then read by programs, which want whole values)."""
    if os.environ.get("COLUMNS", "").isdigit():
        return int(os.environ["COLUMNS"])
    if sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return None


def parse_columns(value: str | None, default: Sequence[str] | None) -> list[str] | None:
    """--columns: a comma list, 'all' (None: every column), or the command's default
    (None: every column)."""
    if value is None:
        return None if default is None else list(default)
    if value.strip() == "all":
        return None
    return [c.strip() for c in value.split(",") if c.strip()]


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for row in rows:
        names.extend(c for c in row if c not in names)
    return names


def _fit(names: list[str], widths: list[int], limit: int) -> list[int]:
    widths = list(widths)
    floors = [min(w, max(_MIN_WIDTH, len(n))) for n, w in zip(names, widths)]
    while sum(widths) + 2 * (len(widths) - 1) > limit:
        shrinkable = [i for i, w in enumerate(widths) if w > floors[i]]
        if not shrinkable:
            break
        widest = max(shrinkable, key=lambda i: widths[i])
        widths[widest] -= 1
    return widths


def _clip(text: str, width: int, column: str) -> str:
    if len(text) <= width:
        return text.ljust(width)
    if column in _KEEP_END:
        return "…" + text[len(text) - width + 1 :]
    return text[: width - 1] + "…"


def printable(text: str) -> str:
    """`text` with its control characters escaped as Python writes them (a newline as \\n)."""
    return _CONTROL.sub(lambda found: repr(found.group())[1:-1], text)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return printable(str(value))


def _value(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_value(v)}" for k, v in value.items() if v not in (None, ""))
    if isinstance(value, (list, tuple)):
        return ", ".join(_value(v) for v in value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return printable(str(value))
