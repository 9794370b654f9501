"""JSON decoding for the hot read path (index records, sealed personal fields, index documents).

orjson decodes a stored record in ~1.8 µs against ~6.4 µs for the stdlib, and a timeline search
decodes two documents per record (the record and its personal fields): ~0.12 ms of a ~1.4 ms
search. Writers keep the stdlib encoder, so the bytes on disk are unchanged (docs/format.md).

One difference matters: the stdlib writes a lone surrogate in a string (valid in a Python
``str``, and accepted from a client's JSON) as ``\\udXXX``, which orjson refuses to decode.
Such a document is decoded by the stdlib instead, so every document ever written still reads.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(raw: bytes | bytearray | memoryview | str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(bytes(raw) if isinstance(raw, memoryview) else raw)
