"""The metric names a PromQL expression reads, and the names a /metrics page exposes.

The expression parser is deliberately small: it removes what cannot be a metric name (string
literals, label matchers in braces, range and offset durations in brackets, the label lists of
``by``/``without``/``on``/``ignoring``/``group_left``/``group_right``), then every remaining
identifier that is not a keyword and is not called like a function is a metric name.
``test_promql_parser_*`` pins it on expressions with each of those parts.
"""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
            "inf", "nan"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w:.$])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    text = _STRING.sub('""', expr)
    while True:  # {…} may hold a "" left by a string; a matcher never nests braces
        stripped = _BRACES.sub(" ", text)
        if stripped == text:
            break
        text = stripped
    text = _BRACKETS.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in KEYWORDS:
            continue
        names.add(name)
    return names


def exposed_names(page: str) -> set[str]:
    """Every series name a scrape of ``page`` (text exposition format) yields, including the
    ``_total``/``_bucket``/``_count``/``_sum`` names of families that have no samples yet (a
    labelled counter before its first increment)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(page):
        names.update(sample.name for sample in family.samples)
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "summary": ("_count", "_sum"),
                    "info": ("_info",)}.get(family.type, ("",))
        names.update(family.name + suffix for suffix in suffixes)
    return names
