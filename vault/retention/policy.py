"""Retention classes and the date a record's retention obligation ends.

``medical`` keeps a record for N years from capture (10 by default; configurable per tenant),
``aesthetic`` for M months (24), ``until`` to an explicit date. Until that date a record may be
erased only by a DPO override; after it the sweeper shreds it unless it is on legal hold.

Per-tenant medical periods come from configuration (``medical_retention_by_tenant``, e.g.
``"clinic-a=15,clinic-b=8"`` or a TOML table) rather than from the index: a retention period is
a policy decision reviewed like the rest of the configuration, and a record's ``retain_until``
is computed when it is written (upload, metadata change), so changing the period applies to
records written afterwards. Records already stored keep the date they were given.
"""

from __future__ import annotations

import calendar
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timezone
from types import MappingProxyType

from vault.metadata import Metadata
from vault.values import tenant_pairs


@dataclass(frozen=True)
class RetentionPolicy:
    medical_years: int = 10
    aesthetic_months: int = 24
    medical_years_by_tenant: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    def medical_years_for(self, tenant: str | None) -> int:
        if tenant is None:
            return self.medical_years
        return self.medical_years_by_tenant.get(tenant, self.medical_years)

    def retain_until(self, metadata: Metadata, tenant: str | None = None) -> datetime:
        captured = metadata.captured_at_dt
        retention = metadata.retention
        if retention.cls == "until":
            assert retention.until is not None
            return datetime.combine(date.fromisoformat(retention.until), time(), timezone.utc)
        if retention.cls == "medical":
            months = self.medical_years_for(tenant) * 12
        else:
            months = self.aesthetic_months
        return add_months(captured, months)


def retention_allows_change(before: datetime | None, after: datetime | None) -> bool:
    """Whether moving retain_until from ``before`` to ``after`` needs no override: only an
    earlier end of the obligation does (it would make a record erasable sooner)."""
    if before is None:
        return True
    return after is not None and after >= before


def parse_tenant_years(spec: str | Mapping[str, object]) -> dict[str, int]:
    """``"clinic-a=15, clinic-b=8"`` (environment) or ``{"clinic-a": 15}`` (TOML) → mapping.

    Raises ``ValueError`` naming what is wrong (the configuration loader reports it)."""
    pairs = tenant_pairs(spec, "YEARS")
    out: dict[str, int] = {}
    for tenant, years in pairs:
        if isinstance(years, bool):
            raise ValueError("years must be a whole number")
        try:
            value = int(years)  # type: ignore[call-overload]
        except (TypeError, ValueError) as exc:
            raise ValueError("years must be a whole number") from exc
        if not tenant or not 1 <= value <= 100:
            raise ValueError("each tenant needs a name and 1 to 100 years")
        out[tenant] = value
    return out


def add_months(moment: datetime, months: int) -> datetime:
    """Calendar months later, clamped to the month's last day (31 Jan + 1 month = 28/29 Feb)."""
    index = moment.year * 12 + (moment.month - 1) + months
    year, month = divmod(index, 12)
    year = min(year, 9999)
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return moment.replace(year=year, month=month + 1, day=day)
