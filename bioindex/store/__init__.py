"""The collection on disk: generations of immutable files, one writer, many readers.

Modules, by responsibility: `front` (Store: opening, the write order), `catalog` (all SQL),
`shards` (vector files), `live_index` (the FAISS index), `snapshot` (generations),
`lock` (the writer lock), `files` (durable writes, checksums), `records` (row types and
Darwin Core columns), `check` (verify and repair), `legacy` (format 1 migration).
"""

from bioindex.store.front import Store, fault
from bioindex.store.layout import MANIFEST
from bioindex.store.records import (
    DWC_COLUMNS,
    DWC_FLOAT_COLUMNS,
    DWC_TEXT_COLUMNS,
    RANKS,
    Failure,
    ImageRecord,
    dwc_column,
    split_metadata,
    with_photo_facts,
)

__all__ = [
    "DWC_COLUMNS", "DWC_FLOAT_COLUMNS", "DWC_TEXT_COLUMNS", "MANIFEST", "RANKS", "Failure",
    "ImageRecord", "Store", "dwc_column", "fault", "split_metadata", "with_photo_facts",
]  # fmt: skip
