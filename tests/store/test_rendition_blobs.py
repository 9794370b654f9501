"""Rendition blobs: their keys (derived from the record's DEK) and their names in the backends."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vault.errors import BlobCorrupt, NotFound
from vault.ids import encode_id
from vault.store.backends.base import blob_names, is_rendition, record_of_blob, rendition_blob_id
from vault.store.backends.fs import FsBackend
from vault.store.format import derive_rendition_key, derive_subkeys
from vault.store.sealer import open_bytes, open_under, seal_under

DEK = bytes(range(32))
RID = bytes(range(100, 116))


def test_rendition_keys_are_hkdf_of_the_dek_with_their_own_info() -> None:
    # The derivation of docs/format.md, recomputed independently.
    for kind in ("thumbnail", "preview"):
        expected = HKDF(hashes.SHA256(), 32, RID, b"imagevault/v1/rendition/" + kind.encode()).derive(DEK)
        assert derive_rendition_key(DEK, RID, kind) == expected
    keys = {derive_rendition_key(DEK, RID, "thumbnail"), derive_rendition_key(DEK, RID, "preview"),
            derive_subkeys(DEK, RID).blob, derive_subkeys(DEK, RID).metadata}
    assert len(keys) == 4
    with pytest.raises(ValueError):
        derive_rendition_key(DEK, RID, "original")


def test_a_rendition_opens_only_under_its_own_key() -> None:
    thumb_key = derive_rendition_key(DEK, RID, "thumbnail")
    blob = seal_under(thumb_key, RID, b"webp pixels")
    assert open_under(thumb_key, RID, blob) == b"webp pixels"
    with pytest.raises(BlobCorrupt):
        open_under(derive_rendition_key(DEK, RID, "preview"), RID, blob)
    with pytest.raises(BlobCorrupt):
        open_bytes(DEK, RID, blob)  # not as the original
    with pytest.raises(BlobCorrupt):
        open_under(derive_rendition_key(secrets.token_bytes(32), RID, "thumbnail"), RID, blob)


def test_rendition_blob_names() -> None:
    rid = encode_id(RID)
    assert rendition_blob_id(rid, "thumbnail") == rid + ".t"
    assert blob_names(rid) == [rid, rid + ".t", rid + ".p"]
    assert record_of_blob(rid + ".p") == rid and not is_rendition(rid) and is_rendition(rid + ".t")


async def test_fs_backend_keeps_renditions_beside_their_record(tmp_path: Path) -> None:
    backend = FsBackend(tmp_path)
    rid = encode_id(RID)
    for name in blob_names(rid):
        writer = await backend.open_writer(name)
        await writer.write(name.encode())
        await writer.commit()
    assert backend.path_of(rid + ".t") == tmp_path / rid[-2:].lower() / f"{rid}.t.ivb"
    assert sorted([i async for i in backend.list_ids()]) == sorted(blob_names(rid))
    assert await backend.read(rid + ".p", 0, 100) == (rid + ".p").encode()
    for bad in (rid + ".x", rid + ".t.t", rid + "/../x", rid[:-1] + ".t"):
        with pytest.raises(NotFound):
            await backend.size(bad)
