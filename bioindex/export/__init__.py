"""What leaves a store: Darwin Core Archives (archive.py) and embeddings (vectors.py)."""
