"""What separates a CSV's fields, from its header line."""

from __future__ import annotations

SEPARATORS = "\t,;"


def delimiter(header: str) -> str:
    """The separator a table's header line uses most: a tab, a comma, or the semicolon Excel
    writes where the comma is the decimal mark (German, French, Dutch, … settings). Read
    with commas, a semicolon file was one column ("needs a column naming the images",
    though it had one). A header with none of them (one column) gives the tab."""
    return max(SEPARATORS, key=header.count)
