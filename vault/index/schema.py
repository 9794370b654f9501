"""Key encodings of the LMDB index: ordered byte strings, so range scans answer queries.

Every secondary key ends in ``captured_at (8 bytes) || record id (16 bytes)``, so a prefix scan
returns records ordered by capture time then id, and that 24-byte suffix is also the search
cursor. The layouts are specified in docs/format.md ("Index keys"). No key contains a patient
identifier: patients are found through ``HMAC-SHA256(tenant index key, normal form of the
patient id)``, the normal form given by the tenant's scheme (``vault.index.patient_ids``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
from datetime import datetime, timezone

from vault.errors import InvalidRequest

DB_RECORDS = b"records"
DB_DEKS = b"deks"
DB_BY_PATIENT = b"by_patient"
DB_BY_FACET = b"by_facet"
DB_BY_EXPIRY = b"by_expiry"
DB_TOKENS = b"tokens"
DB_TENANTS = b"tenants"
DB_SHREDLOG = b"shredlog"
DB_JOBS = b"jobs"
DB_META = b"meta"
DB_UPLOADS = b"uploads"  # resumable (tus) uploads: upload id -> sealed state (vault/index/uploads.py)
DB_IDEMPOTENCY = b"idempotency"
# console sessions: SHA-256(session id) -> sealed, encrypted session (vault/index/console_sessions.py)
DB_CONSOLE_SESSIONS = b"console_sessions"
ALL_DBS = (
    DB_RECORDS, DB_DEKS, DB_BY_PATIENT, DB_BY_FACET, DB_BY_EXPIRY, DB_TOKENS, DB_TENANTS,
    DB_SHREDLOG, DB_JOBS, DB_META, DB_UPLOADS, DB_IDEMPOTENCY, DB_CONSOLE_SESSIONS,
)
# 1: records stored as bare JSON; 2: records and token documents sealed under the index
# integrity key (vault/index/integrity.py), which ``meta`` ``integrity`` holds wrapped.
SCHEMA_VERSION = 2

# Keys of the small databases.
META_SCHEMA = b"schema"  # meta: {"version": SCHEMA_VERSION}
# meta: {"default": "exact" | "legacy"}, the patient-id scheme of tenants that configure none
# (vault/index/patient_ids.py); the scheme each tenant uses is in its ``tenants`` document.
META_PATIENT_ID_SCHEME = b"patient_id_scheme"
STATS_PREFIX = b"stats:"  # meta: stats:<tenant> -> {"records": n, "bytes": n}
# meta: uploads:<tenant> -> {"open": n, "bytes": n}, the tenant's open resumable uploads and the
# sum of their declared lengths (the limits max_open_uploads and max_open_upload_bytes)
UPLOAD_STATS_PREFIX = b"uploads:"
JOB_REWRAP = b"rewrap"  # jobs: the key rotation's rewrap job
JOB_EPOCH = b"epoch"  # jobs: the shred epoch in progress (phase, target version)
# jobs: rendition/<16-byte ID> -> one record's rendition job and its outcome (state, reason,
# each rendition's etag and size); keys sort by record id, so by upload time: a FIFO backlog.
RENDITION_JOB_PREFIX = b"rendition/"
META_KEY_VERSIONS = b"key_versions"  # meta: {"current": n, "floor": f}: KEK versions as the index knows them
META_EPOCH = b"epoch"  # meta: the last completed shred epoch (number, times, key version)
META_ESCROW = b"escrow"  # meta: the last key escrow (epoch number, time)
META_INTEGRITY = b"integrity"  # meta: {"key": wrapped index integrity key, "created_at": time}
META_BACKUP = b"backup"  # meta: the last backup snapshot (name, epoch number, time)
# meta: {"n": count}: bumped in the commit of every shred, key rotation, retirement or epoch;
# a process that sees it change drops every unwrapped key it caches (vault/services/datakeys.py).
META_KEY_GENERATION = b"key_generation"
META_SCRUB = b"scrub"  # meta: counts of the last completed scrub (any process), for the daemon's metrics

# Facet codes in by_facet keys. A record has one ALL entry (its tenant timeline), one entry
# per present single-valued facet, one per tag and one per consented purpose.
FACET_ALL = b"a"
FACET_LESION = b"l"
FACET_SESSION = b"s"
FACET_MODALITY = b"m"
FACET_BODY_SITE = b"b"
FACET_TAG = b"t"
FACET_CONSENT = b"c"

SEARCH_FACETS = {
    "lesion_id": FACET_LESION,
    "session_id": FACET_SESSION,
    "modality": FACET_MODALITY,
    "body_site": FACET_BODY_SITE,
    "tag": FACET_TAG,
    "consent": FACET_CONSENT,
}

_TENANT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_TIME_BIAS = 1 << 63
TIME_LEN = 8
ID_LEN = 16
HMAC_LEN = 32  # H, the blind-index value of a patient
SUFFIX_LEN = TIME_LEN + ID_LEN  # TIME || ID, the end of every secondary key


def valid_tenant(name: str) -> bool:
    return bool(_TENANT.match(name))


def tenant_prefix(tenant: str) -> bytes:
    raw = tenant.encode()
    return bytes([len(raw)]) + raw


def encode_time(moment: datetime) -> bytes:
    """Microseconds since the epoch, biased so that the unsigned big-endian order is time order."""
    delta = moment.astimezone(timezone.utc) - datetime(1970, 1, 1, tzinfo=timezone.utc)
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return struct.pack(">Q", micros + _TIME_BIAS)


def decode_time(raw: bytes) -> int:
    return struct.unpack(">Q", raw)[0] - _TIME_BIAS


def blind_index_value(index_key: bytes, normal_form: bytes) -> bytes:
    """``H``: the HMAC of a patient id's normal form under its tenant's scheme
    (``vault.index.patient_ids``, which every caller goes through)."""
    return hmac.new(index_key, normal_form, hashlib.sha256).digest()


def suffix(captured: bytes, record_id: bytes) -> bytes:
    return captured + record_id


def patient_prefix(tenant: str, hmac_value: bytes) -> bytes:
    return tenant_prefix(tenant) + hmac_value


def facet_prefix(tenant: str, facet: bytes, value: str = "") -> bytes:
    # Two length bytes: facet values are at most 128 characters, up to 512 bytes of UTF-8.
    raw = value.encode()
    if len(raw) > 0xFFFF:
        raise InvalidRequest("search value too long")
    return tenant_prefix(tenant) + facet + len(raw).to_bytes(2, "big") + raw


def expiry_key(retain_until: datetime, record_id: bytes) -> bytes:
    return encode_time(retain_until) + record_id


def token_key(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def console_session_key(session_id: str) -> bytes:
    """Where a console session is filed: SHA-256 of its id (the id itself is only in the cookie)."""
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).digest()


def shredlog_key(moment: datetime, record_id: bytes) -> bytes:
    return encode_time(moment) + record_id


def rendition_job_key(record_id: bytes) -> bytes:
    return RENDITION_JOB_PREFIX + record_id


def record_id_of(key: bytes) -> bytes:
    """The record id that ends every secondary key (``by_patient``, ``by_facet``, ``by_expiry``,
    ``shredlog``)."""
    return key[-ID_LEN:]


def suffix_of(key: bytes) -> bytes:
    """``TIME || ID``, the last 24 bytes of a ``by_patient`` or ``by_facet`` key: the search cursor."""
    return key[-SUFFIX_LEN:]


# idempotency: the outcome of a request made with an Idempotency-Key, and its expiry queue
# (vault/services/idempotency.py). K is a 32-byte HMAC of the caller's scope and the key.
IDEMPOTENCY_ENTRY = b"k"  # b"k" || KIND || K -> sealed outcome document
IDEMPOTENCY_EXPIRY = b"x"  # b"x" || TIME(expires) || KIND || K -> empty
IDEMPOTENCY_UPLOAD = b"u"  # KIND of POST /v1/images
IDEMPOTENCY_ERASURE = b"e"  # KIND of POST /v1/patients/erase
IDEMPOTENCY_KINDS = (IDEMPOTENCY_UPLOAD, IDEMPOTENCY_ERASURE)
IDEMPOTENCY_KEY_LEN = 1 + 1 + HMAC_LEN


def idempotency_key(kind: bytes, lookup: bytes) -> bytes:
    return IDEMPOTENCY_ENTRY + kind + lookup


def idempotency_expiry_key(expires: datetime, entry_key: bytes) -> bytes:
    """The expiry-queue key of an entry: its expiry time, then the entry's KIND || K."""
    return IDEMPOTENCY_EXPIRY + encode_time(expires) + entry_key[1:]


def idempotency_entry_of(expiry_key: bytes) -> bytes:
    """The entry key an expiry-queue key points to."""
    return IDEMPOTENCY_ENTRY + expiry_key[1 + TIME_LEN:]


def stats_key(tenant: str) -> bytes:
    return STATS_PREFIX + tenant.encode()


def upload_stats_key(tenant: str) -> bytes:
    return UPLOAD_STATS_PREFIX + tenant.encode()


def stats_tenant(key: bytes) -> str | None:
    """The tenant a ``meta`` key holds statistics for; None for any other ``meta`` key."""
    return key[len(STATS_PREFIX):].decode() if key.startswith(STATS_PREFIX) else None
