"""The names of a store's files and folders (see front.py for what each holds)."""

MANIFEST = "manifest.json"
CURRENT = "CURRENT"
SNAPSHOT_DIR = "snapshots"
CATALOG_DIR = "catalog"
SHARD_DIR = "embeddings"
INDEX_DIR = "index"
LOCK_FILE = "writer.lock"
DATA_DIRS = (CATALOG_DIR, SHARD_DIR, INDEX_DIR, SNAPSHOT_DIR)
QUERY_CACHE_DIR = "query-cache"  # derived, outside the generations (see query_cache.py)
HEADS_DIR = "heads"  # derived: few-shot classifiers trained on the labels (search/fewshot.py)
