"""Patient-id schemes: which patient identifiers a tenant's blind index treats as one patient.

The blind index holds ``HMAC(tenant index key, normal form of the patient id)``; two ids are
one patient exactly when their normal forms under the tenant's scheme are equal. A scheme that
folds too much merges different patients, and then a subject-access export hands over another
patient's images and an erasure destroys them, so the default is the one that folds least:

- ``exact``: Unicode NFC, leading and trailing white space removed, nothing else (no case
  folding, no punctuation removed). The default of data directories created with schemes.
- ``nhs``: an NHS number: ten ASCII digits once white space and ``-`` are removed, with a valid
  modulus-11 check digit; anything else is refused (400, field ``patient_id``).
- ``legacy``: white space and ``-`` removed, then case-folded: the normalisation of data
  directories indexed before schemes existed (``AB-12`` and ``ab12`` are one patient).

Which scheme a tenant's blind index uses is recorded in its ``tenants`` document
(``patient_id_scheme``) the first time one of its patient ids is indexed or looked up, and
that record, not the configuration, decides from then on: entries written under one scheme are
not found under another, so a tenant switches only when its entries are recomputed (during a
shred epoch). Until then a configuration that names another scheme is a pending switch,
reported by ``pending_switches`` and logged, never applied silently. docs/config.md explains
the settings, docs/format.md the documents.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import TYPE_CHECKING

from vault.errors import invalid_field
from vault.index import schema
from vault.metadata import WHITE_SPACE
from vault.values import tenant_pairs

if TYPE_CHECKING:
    from vault.index.engine import IndexEngine, IndexTxn

log = logging.getLogger(__name__)

EXACT = "exact"
NHS = "nhs"
LEGACY = "legacy"
SCHEMES = (EXACT, NHS, LEGACY)
# What a data directory that has never indexed a patient id under a recorded scheme gets.
NEW_DIRECTORY_DEFAULT = EXACT
EXISTING_DIRECTORY_DEFAULT = LEGACY

_LEGACY_IGNORED = re.compile(r"[\s\-]")
_NHS_IGNORED = re.compile(r"[\s\-]")
_NHS_DIGITS = re.compile(r"[0-9]{10}")


# normal forms ------------------------------------------------------------------------------
def nhs_number_valid(digits: str) -> bool:
    """The NHS number check: weights 10..2 on the first nine digits, check digit
    11 - (sum mod 11), where 11 means 0 and 10 means the number is not valid."""
    if not _NHS_DIGITS.fullmatch(digits):
        return False
    total = sum(int(d) * w for d, w in zip(digits[:9], range(10, 1, -1)))
    check = 11 - total % 11
    if check == 11:
        check = 0
    return check != 10 and check == int(digits[9])


def exact_form(patient_id: str) -> str:
    """NFC, trimmed of white space at both ends (the white space of the metadata text rule)."""
    return unicodedata.normalize("NFC", patient_id).strip(WHITE_SPACE)


def normal_form(scheme: str, patient_id: str) -> bytes:
    """The bytes the blind index HMACs; ``invalid_request`` naming ``patient_id`` when the
    scheme refuses the id (the message never contains it)."""
    if scheme == EXACT:
        return exact_form(patient_id).encode()
    if scheme == NHS:
        digits = _NHS_IGNORED.sub("", patient_id)
        if not nhs_number_valid(digits):
            raise invalid_field("patient_id", "patient_id is not a valid NHS number (10 digits and a valid check digit)")
        return digits.encode()
    if scheme == LEGACY:
        return _LEGACY_IGNORED.sub("", patient_id).casefold().encode()
    raise ValueError(f"unknown patient id scheme {scheme!r}")


def patient_hmac(index_key: bytes, scheme: str, patient_id: str) -> bytes:
    """The blind-index value of ``patient_id`` under ``scheme`` and a tenant's index key.

    Services go through ``TenantKeys.patient_hmac``, which applies the tenant's recorded
    scheme; this is the computation itself, for code that holds the key and knows the scheme
    (recomputing a tenant's entries under a new key or a new scheme)."""
    return schema.blind_index_value(index_key, normal_form(scheme, patient_id))


def same_raw_id(a: str, b: str) -> bool:
    """Whether two ids are written the same way (up to NFC and surrounding white space): under
    ``legacy`` two records of one blind-index entry whose raw ids differ may be two patients."""
    return exact_form(a) == exact_form(b)


# settings ----------------------------------------------------------------------------------
def parse_scheme(name: str) -> str:
    if name not in SCHEMES:
        raise ValueError("a scheme is exact, nhs or legacy")
    return name


def parse_tenant_schemes(spec: str | Mapping[str, object]) -> dict[str, str]:
    """``"clinic-a=nhs, clinic-b=exact"`` (environment) or ``{"clinic-a": "nhs"}`` (TOML) →
    mapping. Raises ``ValueError`` naming what is wrong (the configuration loader reports it)."""
    pairs = tenant_pairs(spec, "SCHEME")
    out: dict[str, str] = {}
    for tenant, scheme in pairs:
        if not tenant:
            raise ValueError("each entry needs a tenant name")
        if not isinstance(scheme, str):
            raise ValueError("a scheme is exact, nhs or legacy")
        out[tenant] = parse_scheme(scheme)
    return out


@dataclass(frozen=True)
class SchemeSettings:
    """The configured schemes: per tenant, else ``default``, else the data directory's default."""

    default: str | None = None
    by_tenant: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def configured(self, tenant: str, directory_default: str) -> str:
        return self.by_tenant.get(tenant) or self.default or directory_default


@lru_cache(maxsize=16)
def settings(default: str, by_tenant: str) -> SchemeSettings:
    """``SchemeSettings`` from the two configuration values (checked by the loader already)."""
    return SchemeSettings(parse_scheme(default) if default else None, MappingProxyType(parse_tenant_schemes(by_tenant)))


# recorded schemes --------------------------------------------------------------------------
@dataclass(frozen=True)
class TenantScheme:
    in_use: str  # the scheme the tenant's blind index is written under
    configured: str  # what the configuration asks for; differs while a switch is pending

    @property
    def switch_pending(self) -> bool:
        return self.in_use != self.configured


def directory_default(txn: IndexTxn) -> str:
    """The recorded default of the data directory; undecided yet: ``legacy`` if the index
    already holds records (they were indexed before schemes existed), else ``exact``."""
    doc = txn.get_doc(schema.DB_META, schema.META_PATIENT_ID_SCHEME)
    if doc is not None:
        return str(doc["default"])
    return EXISTING_DIRECTORY_DEFAULT if txn.count(schema.DB_RECORDS) else NEW_DIRECTORY_DEFAULT


def recorded(txn: IndexTxn, tenant: str) -> str | None:
    doc = txn.get_doc(schema.DB_TENANTS, tenant.encode())
    return None if doc is None else doc.get("patient_id_scheme")


def _has_entries(txn: IndexTxn, tenant: str) -> bool:
    prefix = schema.tenant_prefix(tenant)
    stop = prefix + b"\xff" * (schema.HMAC_LEN + schema.SUFFIX_LEN + 1)
    return next(txn.scan_keys(schema.DB_BY_PATIENT, prefix, stop), None) is not None


def adopt(txn: IndexTxn, tenant: str, wanted: SchemeSettings) -> TenantScheme:
    """Record the tenant's scheme if it has none yet (a write transaction; the tenant's
    ``tenants`` document exists). A tenant with blind-index entries but no recorded scheme was
    indexed before schemes existed: ``legacy``. One without entries takes its configured scheme."""
    if txn.get_doc(schema.DB_META, schema.META_PATIENT_ID_SCHEME) is None:
        txn.put_doc(schema.DB_META, schema.META_PATIENT_ID_SCHEME, {"default": directory_default(txn)})
    configured = wanted.configured(tenant, directory_default(txn))
    key = tenant.encode()
    doc = txn.get_doc(schema.DB_TENANTS, key)
    if doc is None:
        raise KeyError("tenant document missing")  # TenantKeys.get creates it first
    in_use = doc.get("patient_id_scheme")
    if in_use is None:
        in_use = LEGACY if _has_entries(txn, tenant) else configured
        txn.put_doc(schema.DB_TENANTS, key, {**doc, "patient_id_scheme": in_use})
    return TenantScheme(in_use, configured)


def look_up(txn: IndexTxn, tenant: str, wanted: SchemeSettings) -> TenantScheme | None:
    """The tenant's scheme if it is recorded (None: ``tenant_scheme`` records it). Reads the
    documents of ``scheme_keys``."""
    in_use = recorded(txn, tenant)
    if in_use is None:
        return None
    return TenantScheme(in_use, wanted.configured(tenant, directory_default(txn)))


def scheme_keys(tenant: str) -> list[tuple[bytes, bytes]]:
    """What ``look_up`` reads (``IndexTxn.prefetch``)."""
    return [(schema.DB_TENANTS, tenant.encode()), (schema.DB_META, schema.META_PATIENT_ID_SCHEME)]


async def tenant_scheme(index: IndexEngine, tenant: str, wanted: SchemeSettings,
                        found: TenantScheme | None = None) -> TenantScheme:
    """The tenant's scheme, recorded on first use (its ``tenants`` document must exist).
    ``found``: what the caller's ``look_up`` found already, in a read of its own."""
    if found is None:
        found = index.read(lambda t: look_up(t, tenant, wanted))
    if found is None:
        found = await index.write(lambda t: adopt(t, tenant, wanted))
    if found.switch_pending:
        _report_pending(tenant, found)
    return found


def pending_switches(txn: IndexTxn, wanted: SchemeSettings) -> dict[str, TenantScheme]:
    """Tenants whose configured scheme differs from the one their blind index uses: the
    entries a shred epoch must recompute (from each record's sealed patient id) before
    recording the configured scheme in the tenant's document."""
    default = directory_default(txn)
    out = {}
    for key, doc in txn.iter_docs(schema.DB_TENANTS):
        tenant = key.decode()
        in_use = doc.get("patient_id_scheme")
        if in_use is None:
            continue  # decided on first use, from the configuration: nothing to recompute
        found = TenantScheme(in_use, wanted.configured(tenant, default))
        if found.switch_pending:
            out[tenant] = found
    return out


_REPORTED: set[tuple[str, str, str]] = set()


def _report_pending(tenant: str, found: TenantScheme) -> None:
    """Once per process and switch: the log line an operator sees (tenant names only)."""
    marker = (tenant, found.in_use, found.configured)
    if marker in _REPORTED:
        return
    _REPORTED.add(marker)
    log.warning(
        "tenant %s: patient_id_scheme is configured as %s but its blind index uses %s; "
        "it keeps %s until a shred epoch re-indexes it (reindex pending)",
        tenant, found.configured, found.in_use, found.in_use,
    )
