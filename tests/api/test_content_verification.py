"""An upload's file must be of its declared type: every default type declared over the content of
every other type (and over text, GIF and nothing at all) is 415 ``content_mismatch``, nothing
is stored, and the refusal is audited."""

from __future__ import annotations

import itertools

import pytest

from tests.conftest import (
    PATIENT_IDS,
    files_under,
    sample_file,
    sample_metadata,
    upload_body,
)
from vault.audit.query import AuditFilter
from vault.config import DEFAULT_CONTENT_TYPES

OTHER_CONTENT = {
    "gif": b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;",
    "text": b"This is a letter, not a photograph.\n",
    "empty": b"",
}


def _stored_files(service) -> list:
    # Not the readiness probe's file: it lives for an instant, on a timer, and is no upload's.
    return [p for p in files_under(service.config.blobs_dir) if p.is_file() and not p.name.startswith("probe.")]


async def test_each_declared_type_with_each_wrong_content_is_refused_and_nothing_is_stored(api):
    service = api.service
    headers = await api.headers()
    wrong = [(declared, actual, sample_file(actual)) for declared, actual in
             itertools.permutations(DEFAULT_CONTENT_TYPES, 2)]
    wrong += [(declared, name, data) for declared in DEFAULT_CONTENT_TYPES for name, data in OTHER_CONTENT.items()]
    for declared, actual, data in wrong:
        response = await api.client.post("/v1/images", data=upload_body(data, sample_metadata(), content_type=declared),
                                         headers=headers)
        body = await response.json()
        assert response.status == 415, (declared, actual, body)
        assert body["error"]["code"] == "content_mismatch", (declared, actual)
        assert PATIENT_IDS[0] not in body["error"]["message"]
    assert service.count_records() == 0
    assert _stored_files(service) == []
    entries = service.audit.page(0, 1000, AuditFilter()).entries
    refused = [e for e in entries if e.event.action == "create" and e.event.outcome == "content_mismatch"]
    assert len(refused) == len(wrong)
    assert service.metrics.rejected_uploads.labels("content_mismatch")._value.get() == len(wrong)


@pytest.mark.parametrize("declared", DEFAULT_CONTENT_TYPES)
async def test_each_type_with_its_own_content_is_stored_byte_for_byte(api, declared):
    data = sample_file(declared, b"\x00\x01payload" * 100)
    record = await api.upload(data, content_type=declared)
    response = await api.client.get(f"/v1/images/{record['id']}", headers=await api.headers())
    assert response.status == 200 and await response.read() == data


async def test_a_file_first_upload_is_checked_too(api):
    import aiohttp

    writer = aiohttp.MultipartWriter("form-data")
    part = writer.append(b"GIF89a not a jpeg", {"Content-Type": "image/jpeg"})
    part.set_content_disposition("form-data", name="file", filename="x.jpg")
    import json

    part = writer.append(json.dumps(sample_metadata()), {"Content-Type": "application/json"})
    part.set_content_disposition("form-data", name="metadata")
    response = await api.client.post("/v1/images", data=writer, headers=await api.headers())
    assert response.status == 415 and (await response.json())["error"]["code"] == "content_mismatch"
    assert api.service.count_records() == 0


async def test_the_type_is_judged_as_received_even_when_the_head_arrives_in_tiny_pieces(api):
    data = sample_file("application/dicom", b"dicom body" * 1000)

    async def trickle():
        for i in range(200):
            yield data[i:i + 1]
        yield data[200:]

    response = await api.client.post(
        "/v1/images", data=upload_body(trickle(), sample_metadata(), content_type="application/dicom"),
        headers=await api.headers(),
    )
    assert response.status == 201, await response.text()
