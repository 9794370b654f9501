"""Ingest-time transformations of uploaded bytes (metadata stripping)."""
