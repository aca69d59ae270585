"""The ingest half: sources → decode → embed → store."""
