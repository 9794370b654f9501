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


def test_a_real_openapi_validator_accepts_the_document():
    from openapi_spec_validator import validate

    validate(build_openapi(Config()))  # raises on any violation of the OpenAPI 3.1 schema


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield path, method, operation


def test_every_operation_has_one_declared_tag():
    document = build_openapi(Config())
    declared = [t["name"] for t in document["tags"]]
    assert len(declared) == len(set(declared))
    used = set()
    for path, method, operation in operations(document):
        assert len(operation["tags"]) == 1 and operation["tags"][0] in declared, (path, method)
        used.add(operation["tags"][0])
    assert used <= set(declared)


def test_error_codes_are_an_enum_of_every_code_the_api_answers():
    from vault.errors import ImageVaultError, error_codes

    enum = build_openapi(Config())["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"]
    assert enum == error_codes()
    assert {"not_found", "integrity_error", "not_ready", "unauthorized"} <= set(enum)

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    assert {cls.code for cls in subclasses(ImageVaultError)} <= set(enum)


def test_binary_responses_and_head_are_described():
    document = build_openapi(Config())
    image = document["paths"]["/v1/images/{id}"]
    assert all(c["schema"] == {"type": "string", "format": "binary"} for c in image["get"]["responses"]["200"]["content"].values())
    assert {"ETag", "Repr-Digest", "Cache-Control"} <= set(image["get"]["responses"]["200"]["headers"])
    assert "content" not in image["head"]["responses"]["200"] and "ETag" in image["head"]["responses"]["200"]["headers"]
    export = document["paths"]["/v1/patients/export"]["post"]["responses"]["200"]["content"]
    assert export["application/zip"]["schema"]["format"] == "binary"


def test_codes_written_directly_by_handlers_are_in_the_enum():
    from tests.test_docs import codes_emitted_directly
    from vault.errors import error_codes

    assert codes_emitted_directly() <= set(error_codes())
