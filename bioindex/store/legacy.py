"""Format 1 (one read-write catalog.duckdb beside the shards) → format 2 (generations).

Migration runs once, under the writer lock, when a format-1 store is first opened (or by
`bioindex migrate`). The vector shards stay where they are; the catalog's tables become
Parquet segments; a still-current index file is kept. The switch is the manifest rewrite,
which comes last; a killed migration simply runs again. The old catalog is kept beside the
store as catalog.v1.duckdb.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from bioindex.errors import BioindexError
from bioindex.faiss_index import IndexSpec
from bioindex.store import files, shards, snapshot
from bioindex.store.catalog import Catalog
from bioindex.store.layout import CATALOG_DIR, DATA_DIRS, MANIFEST
from bioindex.store.lock import WriterLock

FORMAT_VERSION = 1
CATALOG = "catalog.duckdb"
BACKUP = "catalog.v1.duckdb"
log = logging.getLogger(__name__)


def migrate(root: Path, wait: bool | float = True) -> str:
    """Migrate a format-1 store in place; returns a one-line account of what was done."""
    lock = WriterLock(root)
    lock.acquire(wait)
    catalog = Catalog(root)
    try:
        manifest = json.loads((root / MANIFEST).read_text())
        if manifest.get("format_version") != FORMAT_VERSION:
            return f"store {root} is already at format {manifest.get('format_version')}"
        started = time.time()
        log.warning("migrating store %s from format 1 to %s (once)", root,
                    snapshot.FORMAT_VERSION)  # fmt: skip
        for name in DATA_DIRS:
            with files.disk_errors(root / name):
                (root / name).mkdir(exist_ok=True)
        facts = catalog.open_legacy(root / CATALOG)
        generation = facts["generation"] + 1
        snap = snapshot.Snapshot(
            generation=generation, model=manifest["model"], vectors_version=1,
            index_spec=manifest.get("index") or IndexSpec("flat", int(manifest["model"]["dim"]))
            .to_json(), next_image_id=facts["next_image_id"], runs=facts["runs"],
            created_at=manifest.get("created_at", ""),
        )  # fmt: skip
        for table in ("images", "failures", "occurrences"):
            name = f"{CATALOG_DIR}/{table}-{generation:09d}-m.parquet"
            rows = catalog.export_legacy(table, root / name)
            record = {"file": name, "rows": rows, **files.identity(root / name)}
            if table == "images" and rows:
                snap.images.append(record)
            elif table == "failures" and rows:
                snap.failures = record
            elif table == "occurrences" and rows:
                snap.occurrences.append({**record, "source": "format 1"})
            elif not rows:
                (root / name).unlink()
        catalog.close_legacy()
        for name in facts["shards"]:
            path = root / shards.SHARD_DIR / name
            if not path.is_file():
                raise BioindexError(f"cannot migrate {root}: vector shard {name} is missing")
            rows = int(np.load(path, mmap_mode="r").shape[0])
            snap.shards.append({"file": f"{shards.SHARD_DIR}/{name}", "rows": rows,
                                **files.identity(path)})  # fmt: skip
        snapshot.write(root, snap)
        snapshot.switch(root, generation)
        manifest = {"format_version": snapshot.FORMAT_VERSION, "created_at":
                    manifest.get("created_at", ""), "model": manifest["model"]}  # fmt: skip
        files.write_text(root / MANIFEST, json.dumps(manifest, indent=2))
        (root / CATALOG).replace(root / BACKUP)
        for name in ("index.faiss", "index.json", CATALOG + ".wal"):
            (root / name).unlink(missing_ok=True)
        line = (f"migrated {root} to format {snapshot.FORMAT_VERSION} in "
                f"{time.time() - started:.1f}s: {sum(r['rows'] for r in snap.images)} catalog "
                f"rows, {len(snap.shards)} shards kept; the old catalog is {BACKUP}; the index "
                f"is rebuilt on first use")  # fmt: skip
        log.warning(line)
        return line
    finally:
        catalog.close()
        lock.release()
