"""StoredRecord's JSON form: decoding shares consent and retention values between records
without ever handing one record another's."""

from __future__ import annotations

import json

from vault.index.records import StoredRecord
from vault.metadata import Consent, Metadata, Retention

RID = bytes(range(16))


def stored(consent: Consent, retention: Retention) -> StoredRecord:
    metadata = Metadata(patient_id="", captured_at="2026-11-20T10:15:00Z", modality="dermoscopic",
                        body_site="chest", consent=consent, retention=retention)
    return StoredRecord(id=RID, tenant="clinic-a", metadata=metadata, sealed=b"\x01" * 40, patient_hmac=b"\x02" * 32,
                        content_type="image/jpeg", size=3, sha256="0" * 64, created_at="2026-11-20T10:15:00Z",
                        updated_at="2026-11-20T10:15:00Z", retain_until=None)


def test_records_with_different_consent_and_retention_decode_to_their_own_values():
    variants = [
        (Consent(), Retention()),
        (Consent(research=True, method="written", recorded_at="2026-11-01"), Retention("aesthetic")),
        (Consent(care=False, teaching=True), Retention("until", "2030-01-01")),
    ]
    for _ in range(2):  # the second round decodes through the shared instances
        for consent, retention in variants:
            record = stored(consent, retention)
            decoded = StoredRecord.from_bytes(RID, record.to_bytes())
            assert decoded == record
            assert decoded.metadata.consent == consent and decoded.metadata.retention == retention


def test_an_unhashable_consent_value_decodes_as_it_always_did():
    doc = json.loads(stored(Consent(), Retention()).to_bytes())
    doc["meta"]["consent"]["method"] = ["written", "witnessed"]
    decoded = StoredRecord.from_bytes(RID, json.dumps(doc).encode())
    assert decoded.metadata.consent == Consent(method=["written", "witnessed"])  # type: ignore[arg-type]


def test_documents_the_stdlib_wrote_with_a_lone_surrogate_still_decode():
    """json.dumps writes a lone surrogate as an escape that orjson refuses: codec falls back."""
    import json

    from vault import codec

    raw = json.dumps({"description": "scar \ud800 left"}).encode()
    assert codec.loads(raw) == {"description": "scar \ud800 left"}
    assert codec.loads(memoryview(raw)) == json.loads(raw)
    assert codec.loads(b'{"a":[1,2.5,null,true]}') == {"a": [1, 2.5, None, True]}


def test_replacing_the_patient_hmac_in_the_encoded_record_equals_re_encoding_it():
    record = stored(Consent(research=True), Retention("until", "2030-01-01"))
    new = b"\xfe" * 32
    moved = StoredRecord.with_patient_hmac_bytes(record.to_bytes(), record.patient_hmac, new)
    assert moved == record.with_changes(patient_hmac=new).to_bytes()
    assert StoredRecord.with_patient_hmac_bytes(record.to_bytes(), b"\x03" * 32, new) is None
