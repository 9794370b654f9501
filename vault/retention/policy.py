"""Retention classes and the date a record's retention obligation ends.

``medical`` keeps a record for N years from capture (10 by default; configurable per tenant),
``aesthetic`` for M months (24), ``until`` to an explicit date. Until that date a record may be
erased only by a DPO override; after it the sweeper shreds it unless it is on legal hold.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date, datetime, time, timezone

from vault.metadata import Metadata


@dataclass(frozen=True)
class RetentionPolicy:
    medical_years: int = 10
    aesthetic_months: int = 24

    def retain_until(self, metadata: Metadata) -> datetime:
        captured = metadata.captured_at_dt
        retention = metadata.retention
        if retention.cls == "until":
            assert retention.until is not None
            return datetime.combine(date.fromisoformat(retention.until), time(), timezone.utc)
        months = self.medical_years * 12 if retention.cls == "medical" else self.aesthetic_months
        return add_months(captured, months)


def add_months(moment: datetime, months: int) -> datetime:
    """Calendar months later, clamped to the month's last day (31 Jan + 1 month = 28/29 Feb)."""
    index = moment.year * 12 + (moment.month - 1) + months
    year, month = divmod(index, 12)
    year = min(year, 9999)
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return moment.replace(year=year, month=month + 1, day=day)
