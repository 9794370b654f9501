"""The document served at /openapi.json is well-formed OpenAPI 3.1 (its behaviour is fuzzed by tests/fuzz.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import schemathesis

from vault.api.openapi import build_openapi
from vault.config import Config

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def test_the_document_validates_as_openapi_3_1():
    document = build_openapi(Config())
    assert document["openapi"] == "3.1.0"
    schemathesis.openapi.from_dict(document).validate()


def test_every_reference_resolves_and_every_schema_is_used():
    document = build_openapi(Config())
    schemas = document["components"]["schemas"]
    prefix = "#/components/schemas/"
    targets = set(refs(document))
    assert targets and all(target.startswith(prefix) for target in targets), targets
    assert {target.removeprefix(prefix) for target in targets} == set(schemas)


def test_operation_ids_are_unique_and_the_content_types_follow_the_config():
    narrow = Config(allowed_content_types=("image/png",))
    document = build_openapi(narrow)
    operation_ids = [
        operation["operationId"]
        for item in document["paths"].values()
        for method, operation in item.items()
        if method in METHODS
    ]
    assert len(operation_ids) == len(set(operation_ids)) > 20
    image = document["paths"]["/v1/images/{id}"]["get"]["responses"]["200"]["content"]
    assert list(image) == ["image/png"]
