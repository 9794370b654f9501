"""Text values shared by the configuration, the command line and query strings: booleans and
durations, parsed one way everywhere."""

from __future__ import annotations

import re
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


def parse_duration(text: str | None) -> timedelta | None:
    """``90d``, ``12h``, ``30m``, ``2w``, ``45s``; None or ``never`` for no limit."""
    if text is None or text == "never":
        return None
    match = _DURATION.match(text)
    if match is None or int(match.group(1)) == 0:
        raise InvalidRequest("ttl must look like 90d, 12h, 30m, 2w or 45s")
    return timedelta(seconds=int(match.group(1)) * _DURATION_UNITS[match.group(2)])
