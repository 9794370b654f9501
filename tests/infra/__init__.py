"""Test and benchmark infrastructure: real SeaweedFS, daemon/CLI subprocesses, raw blob access."""
