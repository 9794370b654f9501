"""Text values shared by the configuration, the command line and query strings: booleans,
durations and per-tenant maps, parsed one way everywhere."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta

from vault.errors import InvalidRequest

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})

_DURATION = re.compile(r"^([0-9]{1,6})([smhdw])$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_bool(text: str) -> bool:
    """``true/yes/on/1`` or ``false/no/off/0`` in any case; ``ValueError`` for anything else."""
    lowered = text.strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise ValueError(text)


def parse_duration(text: str | None, *, what: str = "ttl", allow_zero: bool = False) -> timedelta | None:
    """``90d``, ``12h``, ``30m``, ``2w``, ``45s``; None or ``never`` for no limit. ``what``
    names the value in the error; ``allow_zero`` also accepts ``0`` (with or without a unit)."""
    if text is None or text == "never":
        return None
    if allow_zero and text == "0":
        return timedelta(0)
    match = _DURATION.match(text)
    if match is None or (int(match.group(1)) == 0 and not allow_zero):
        raise InvalidRequest(f"{what} must look like 90d, 12h, 30m, 2w or 45s"
                             + (", or 0" if allow_zero else " (more than 0)"))
    return timedelta(seconds=int(match.group(1)) * _DURATION_UNITS[match.group(2)])


def tenant_pairs(spec: str | Mapping[str, object], what: str) -> list[tuple[str, object]]:
    """``"clinic-a=15, clinic-b=8"`` (environment) or a TOML table ``{"clinic-a": 15}`` →
    ``[(tenant, value), ...]``, values as given (strings from the environment form). Raises
    ``ValueError`` naming what is wrong; ``what`` names the value in that message."""
    if isinstance(spec, Mapping):
        return [(str(k), v) for k, v in spec.items()]
    pairs: list[tuple[str, object]] = []
    for item in str(spec).split(","):
        if not item.strip():
            continue
        tenant, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"expected TENANT={what}")
        pairs.append((tenant.strip(), value.strip()))
    return pairs
