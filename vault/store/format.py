"""Blob format v1: constants, the header, key derivation, nonces and layout arithmetic.

Bytes in, bytes out: no I/O, no clock. ``docs/format.md`` specifies the same format byte by
byte; this module and that document must change together.

A sealed blob is::

    blob   = HEADER || CHUNK_0 || CHUNK_1 || ... || CHUNK_{n-1}
    HEADER = MAGIC(4) || VERSION(1) || ALGORITHM(1) || CHUNK_EXP(1) || RESERVED(1)
             || RECORD_ID(16) || NONCE_PREFIX(7)                              (31 bytes)
    CHUNK_i = AES-256-GCM(key = subkey_blob,
                          nonce = NONCE_PREFIX || i (4 bytes BE) || last flag (1 byte),
                          aad = HEADER)                       = CIPHERTEXT || TAG(16)

Every chunk but the last holds exactly ``chunk_size`` plaintext bytes; the last holds
1..``chunk_size`` bytes, except an empty image, which is exactly one empty final chunk.

Every integrity failure (a malformed header, an impossible size) raises ``BlobCorrupt``;
misuse by the caller (a wrong key or id length, a negative size) raises ``ValueError``.
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass

from vault.errors import BlobCorrupt
from vault.macs import hmac_sha256

MAGIC = b"IVB1"
FORMAT_VERSION = 1
ALG_AES256GCM_HKDF_SHA256 = 1
DEFAULT_CHUNK_EXP = 18  # 256 KiB: see docs/format.md "A writer", rule 4
MIN_CHUNK_EXP = 12
MAX_CHUNK_EXP = 24
TAG_LEN = 16
NONCE_PREFIX_LEN = 7
RECORD_ID_LEN = 16
KEY_LEN = 32
NONCE_LEN = NONCE_PREFIX_LEN + 4 + 1  # the 96-bit nonce AES-GCM is designed for
MAX_CHUNKS = 2**32  # the counter is 4 bytes: indexes 0 .. 2**32 - 1

HKDF_INFO_BLOB = b"imagevault/v1/blob"
HKDF_INFO_METADATA = b"imagevault/v1/metadata"
HKDF_INFO_IDEMPOTENCY = b"imagevault/v1/idempotency"
# One key per rendition kind (docs/format.md "Key derivation"): a rendition blob opens under
# neither the original's key nor the other rendition's.
HKDF_INFO_RENDITION = {
    "thumbnail": b"imagevault/v1/rendition/thumbnail",
    "preview": b"imagevault/v1/rendition/preview",
}

_HEADER = struct.Struct(f">4sBBBB{RECORD_ID_LEN}s{NONCE_PREFIX_LEN}s")
HEADER_LEN = _HEADER.size  # 31

_LAST = b"\x01"
_NOT_LAST = b"\x00"


@dataclass(frozen=True)
class BlobHeader:
    """The fixed-length header that starts every blob.

    It is the associated data of every chunk, so editing any header byte (including the
    reserved byte and the record id) makes every chunk fail authentication.
    """

    record_id: bytes
    nonce_prefix: bytes
    chunk_exp: int = DEFAULT_CHUNK_EXP

    def __post_init__(self) -> None:
        if len(self.record_id) != RECORD_ID_LEN:
            raise ValueError("record id must be 16 bytes")
        if len(self.nonce_prefix) != NONCE_PREFIX_LEN:
            raise ValueError("nonce prefix must be 7 bytes")
        _check_chunk_exp(self.chunk_exp)

    @classmethod
    def new(cls, record_id: bytes, chunk_exp: int = DEFAULT_CHUNK_EXP) -> BlobHeader:
        """A header with a fresh random nonce prefix.

        The subkey is already unique per record (HKDF salt = record id) and a record's blob is
        sealed once, so the random prefix is defence in depth: should a DEK ever be reused
        (a bug, a restored key), two blobs still get distinct nonces with high probability.
        """
        return cls(bytes(record_id), secrets.token_bytes(NONCE_PREFIX_LEN), chunk_exp)

    @property
    def chunk_size(self) -> int:
        return 1 << self.chunk_exp

    def encode(self) -> bytes:
        return _HEADER.pack(
            MAGIC,
            FORMAT_VERSION,
            ALG_AES256GCM_HKDF_SHA256,
            self.chunk_exp,
            0,
            self.record_id,
            self.nonce_prefix,
        )

    @classmethod
    def decode(cls, data: bytes) -> BlobHeader:
        """Parse exactly ``HEADER_LEN`` bytes. Any other length or any invalid field value
        raises ``BlobCorrupt`` (one vague error: the caller must not serve the blob)."""
        if len(data) != HEADER_LEN:
            raise BlobCorrupt()
        magic, version, algorithm, chunk_exp, reserved, record_id, prefix = _HEADER.unpack(
            bytes(data)
        )
        if (
            magic != MAGIC
            or version != FORMAT_VERSION
            or algorithm != ALG_AES256GCM_HKDF_SHA256
            or not MIN_CHUNK_EXP <= chunk_exp <= MAX_CHUNK_EXP
            or reserved != 0
        ):
            raise BlobCorrupt()
        return cls(record_id, prefix, chunk_exp)


@dataclass(frozen=True)
class Subkeys:
    """Keys derived from one record's DEK; each is used for one purpose only."""

    blob: bytes
    metadata: bytes

    def __repr__(self) -> str:  # never print key material
        return "Subkeys(blob=<redacted>, metadata=<redacted>)"


def derive_subkeys(dek: bytes, record_id: bytes) -> Subkeys:
    """HKDF-SHA256(ikm = DEK, salt = record id, info = purpose) -> 32 bytes per purpose.

    Separate subkeys keep the blob and the encrypted metadata in different key spaces, so a
    nonce can never collide across the two. The record id as salt binds the keys to the record:
    a DEK copied onto another record would derive different subkeys.
    """
    if len(dek) != KEY_LEN:
        raise ValueError("data key must be 32 bytes")
    if len(record_id) != RECORD_ID_LEN:
        raise ValueError("record id must be 16 bytes")

    prk = _hkdf_extract(dek, record_id)  # one extract for both purposes: same bytes as two HKDFs
    return Subkeys(blob=_hkdf_expand_32(prk, HKDF_INFO_BLOB), metadata=_hkdf_expand_32(prk, HKDF_INFO_METADATA))


def _hkdf_extract(dek: bytes, record_id: bytes) -> bytes:
    """RFC 5869 extract: PRK = HMAC-SHA256(salt = record id, IKM = DEK)."""
    return hmac_sha256(bytes(record_id), bytes(dek))


def _hkdf_expand_32(prk: bytes, info: bytes) -> bytes:
    """RFC 5869 expand for one 32-byte block: T(1) = HMAC-SHA256(PRK, info || 0x01).

    Written out rather than ``HKDF(...).derive``: the same bytes (tests/vectors pin them) without
    building an HKDF object per key; a timeline search derives one key per record it returns."""
    return hmac_sha256(prk, info + b"\x01")


def derive_metadata_key(dek: bytes, record_id: bytes) -> bytes:
    """Only ``derive_subkeys(dek, record_id).metadata``: reading a record's personal fields
    (every search result) needs no blob key, and skipping its HKDF is ~10% of a timeline search."""
    if len(dek) != KEY_LEN:
        raise ValueError("data key must be 32 bytes")
    if len(record_id) != RECORD_ID_LEN:
        raise ValueError("record id must be 16 bytes")
    return _hkdf_expand_32(_hkdf_extract(dek, record_id), HKDF_INFO_METADATA)


def derive_rendition_key(dek: bytes, record_id: bytes, kind: str) -> bytes:
    """HKDF-SHA256(ikm = DEK, salt = record id, info = "imagevault/v1/rendition/<kind>").

    Derived from the record's DEK, so shredding the DEK makes the renditions unreadable with
    the original; a separate info string per kind keeps each rendition in its own key (and
    nonce) space. ``ValueError`` for an unknown kind."""
    if len(dek) != KEY_LEN:
        raise ValueError("data key must be 32 bytes")
    if len(record_id) != RECORD_ID_LEN:
        raise ValueError("record id must be 16 bytes")
    info = HKDF_INFO_RENDITION.get(kind)
    if info is None:
        raise ValueError(f"unknown rendition kind {kind!r}")
    return _hkdf_expand_32(_hkdf_extract(dek, record_id), info)


def chunk_nonce(prefix: bytes, index: int, last: bool) -> bytes:
    """The 12-byte nonce of chunk ``index``: prefix(7) || index (4 bytes BE) || last flag(1).

    Why each part (the STREAM construction):
    - the counter makes chunk i decrypt only at position i, so reordering, dropping or
      duplicating chunks in the middle fails authentication;
    - the last flag (0x01 on the final chunk only) makes a chunk decrypt only in its role, so a
      blob truncated at a chunk boundary (its new final chunk was sealed as "not last") and a
      blob extended past its real final chunk (that chunk was sealed as "last") both fail;
    - the prefix is random per blob (see ``BlobHeader.new``).
    The header is the AAD of every chunk (see ``sealer``), which covers the record id (a blob
    copied onto another record fails) and every other header field (edits fail).
    """
    if len(prefix) != NONCE_PREFIX_LEN:
        raise ValueError("nonce prefix must be 7 bytes")
    if not 0 <= index < MAX_CHUNKS:
        # Past 2**32 chunks the counter would wrap and repeat a nonce under the same key.
        raise ValueError("chunk index out of range: a blob holds at most 2**32 chunks")
    return bytes(prefix) + index.to_bytes(4, "big") + (_LAST if last else _NOT_LAST)


def _check_chunk_exp(chunk_exp: int) -> None:
    if not isinstance(chunk_exp, int) or not MIN_CHUNK_EXP <= chunk_exp <= MAX_CHUNK_EXP:
        raise ValueError(f"chunk exponent must be {MIN_CHUNK_EXP}..{MAX_CHUNK_EXP}")


def chunk_count(plaintext_size: int, chunk_exp: int = DEFAULT_CHUNK_EXP) -> int:
    """Number of chunks holding ``plaintext_size`` bytes: ceil(size / chunk_size), at least 1.

    An exact multiple of the chunk size has no extra empty chunk; an empty image has one.
    """
    _check_chunk_exp(chunk_exp)
    if plaintext_size < 0:
        raise ValueError("plaintext size must not be negative")
    return max(1, -(-plaintext_size >> chunk_exp))


def sealed_size(plaintext_size: int, chunk_exp: int = DEFAULT_CHUNK_EXP) -> int:
    """Size of the sealed blob: header + plaintext + one tag per chunk."""
    return HEADER_LEN + plaintext_size + TAG_LEN * chunk_count(plaintext_size, chunk_exp)


def plaintext_size_of(sealed_size: int, chunk_exp: int = DEFAULT_CHUNK_EXP) -> int:
    """Inverse of ``sealed_size``; ``BlobCorrupt`` if no plaintext seals to that size.

    Impossible sizes: shorter than header + one tag; a trailing piece shorter than a tag; an
    empty final chunk after full chunks (the writer never produces one, so it can only be an
    appended chunk).
    """
    _check_chunk_exp(chunk_exp)
    body = sealed_size - HEADER_LEN
    if body < TAG_LEN:
        raise BlobCorrupt()
    chunk_size = 1 << chunk_exp
    full, rest = divmod(body, chunk_size + TAG_LEN)
    if rest == 0:
        plaintext = full * chunk_size
    elif rest < TAG_LEN or (rest == TAG_LEN and full > 0):
        raise BlobCorrupt()
    else:
        plaintext = full * chunk_size + rest - TAG_LEN
    if chunk_count(plaintext, chunk_exp) > MAX_CHUNKS:
        raise BlobCorrupt()
    return plaintext


def chunk_offset(index: int, chunk_exp: int = DEFAULT_CHUNK_EXP) -> int:
    """Byte offset of chunk ``index`` in the blob (the header comes first)."""
    _check_chunk_exp(chunk_exp)
    if index < 0:
        raise ValueError("chunk index must not be negative")
    return HEADER_LEN + index * ((1 << chunk_exp) + TAG_LEN)


def chunks_for_range(start: int, end_exclusive: int, chunk_exp: int = DEFAULT_CHUNK_EXP) -> range:
    """Indexes of the chunks holding plaintext bytes [start, end_exclusive); empty if none."""
    _check_chunk_exp(chunk_exp)
    if start < 0 or end_exclusive < start:
        raise ValueError("invalid byte range")
    if start == end_exclusive:
        return range(0)
    return range(start >> chunk_exp, ((end_exclusive - 1) >> chunk_exp) + 1)


def derive_idempotency_key(dek: bytes, record_id: bytes) -> bytes:
    """HKDF-SHA256(ikm = DEK, salt = record id, info = ``imagevault/v1/idempotency``): the key of
    the fingerprint of the upload request that created the record. It dies with the DEK, so
    once the record is shredded (and the epoch has passed) the fingerprint, which covers the
    patient id, cannot be tested against a guess."""
    if len(dek) != KEY_LEN:
        raise ValueError("data key must be 32 bytes")
    if len(record_id) != RECORD_ID_LEN:
        raise ValueError("record id must be 16 bytes")
    # Without an HKDF object per upload: a third of the CPU a key added to an upload, measured
    # by bench/idempotency.py.
    return _hkdf_expand_32(_hkdf_extract(dek, record_id), HKDF_INFO_IDEMPOTENCY)


def hkdf_sha256_32(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 (RFC 5869) with 32 bytes of output, for keys outside the blob format (console
    sessions). An empty salt is HashLen zero bytes, as the RFC says."""
    return _hkdf_expand_32(_hkdf_extract(bytes(ikm), salt or bytes(32)), info)
