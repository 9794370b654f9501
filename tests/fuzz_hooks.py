"""Schemathesis hooks for tests/fuzz.py (loaded through ``hooks`` in schemathesis.toml).

The tus PATCH body is ``application/offset+octet-stream``: raw bytes, which schemathesis knows
how to send as ``application/octet-stream`` but not under that name.
"""

from __future__ import annotations

import schemathesis

schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")
