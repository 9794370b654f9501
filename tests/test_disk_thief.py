"""The attacker's test of "erased means unrecoverable".

The attacker holds everything the daemon's host has at rest: the whole data directory (index
and audit LMDB files with their free pages, blobs, quarantine, the local keyring with its
master key) and every backup folder, including a copy of an old backup taken before the
erasure. It does not call the API: it carves wrapped keys, sealed personal fields, patient
HMACs and blobs out of the raw bytes and tries to open them with every key the key files hold.
To be generous it is told the erased records' ids and the erased patient's identifier (so it
needs no luck to find them): the question is only whether the bytes still open.

Before the shred epoch the erased patient is exposed (the test records what exactly); after
the epoch and the next backup, nothing of it opens.
"""

from __future__ import annotations

import base64
import re
import shutil
from pathlib import Path

from tests.conftest import make_config, make_escrow, open_vault, random_image, sample_metadata
from vault.auth import Principal, Role
from vault.errors import BlobCorrupt
from vault.ids import decode_id
from vault.index import patient_ids, schema
from vault.keys.keyring import LocalKeyring
from vault.metadata import parse_metadata
from vault.patients import ErasureRequest
from vault.store.format import derive_metadata_key
from vault.store.personal import open_personal
from vault.store.sealer import open_bytes

CLINICIAN = Principal("clinic-a", Role.CLINICIAN, "alice")
DPO = Principal("clinic-a", Role.DPO, "dpo")
OPERATOR = Principal("-", Role.ADMIN, "op")
ERASED_PATIENT = "NHS-ZX81-ERASED-4417"
KEPT_PATIENT = "NHS-KEPT-0042"
DIAGNOSIS = "ERASED-DIAGNOSIS-MARKER superficial spreading melanoma"

WRAPPED = re.compile(rb"local:v[0-9]+:[A-Za-z0-9+/]{96}")
SEALED = re.compile(rb'"sealed":"([A-Za-z0-9+/]+={0,2})"')


def raw_files(*roots: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for root in roots if root.exists() for p in root.rglob("*") if p.is_file()}


async def carve(data_dir: Path, backups: list[Path], erased_ids: list[str], images: dict[str, bytes]) -> dict[str, int]:
    """Everything of the erased patient the attacker recovers from the files at rest."""
    files = raw_files(data_dir, *backups)
    everything = b"\n".join(files.values())
    keyring = LocalKeyring.open(data_dir / "keys")  # every key file the daemon can read
    wrapped = sorted({m.decode() for m in WRAPPED.findall(everything)})
    opened = [k for k in await keyring.unwrap_data_keys(wrapped) if isinstance(k, bytes)]
    sealed = {base64.b64decode(m) for m in SEALED.findall(everything)}
    personal: set[str] = set()
    recovered_images: set[str] = set()
    for rid_text in erased_ids:
        rid = decode_id(rid_text)
        for dek in opened:
            key = derive_metadata_key(dek, rid)
            for blob in sealed:
                try:
                    fields = open_personal(key, rid, blob)
                except BlobCorrupt:
                    continue
                if fields.get("patient_id") == ERASED_PATIENT or fields.get("diagnosis") == DIAGNOSIS:
                    personal.add(rid_text)
            for path, content in files.items():
                if path.name == f"{rid_text}.ivb":
                    try:
                        if open_bytes(dek, rid, content) == images[rid_text]:
                            recovered_images.add(rid_text)
                    except (BlobCorrupt, ValueError):
                        pass
    # A way to test a guessed patient id: the erased patient's HMAC under any opened key,
    # present anywhere in the files (raw in by_patient keys, hex in record documents).
    forms = {patient_ids.normal_form(scheme, ERASED_PATIENT) for scheme in (patient_ids.EXACT, patient_ids.LEGACY)}
    testable = 0
    for key in opened:
        for form in forms:
            digest = schema.blind_index_value(key, form)
            if digest in everything or digest.hex().encode() in everything:
                testable += 1
    return {"wrapped keys carved": len(wrapped), "keys opened": len(opened), "personal fields": len(personal),
            "images": len(recovered_images), "patient id testable": testable}


async def test_erased_patient_is_unrecoverable_from_the_disk_after_the_shred_epoch(tmp_path):
    config = make_config(tmp_path / "data")
    vault = await open_vault(config)
    images: dict[str, bytes] = {}

    async def upload(patient: str, n: int) -> str:
        data = random_image(5000 + n, n)

        async def body():
            yield data

        meta = parse_metadata(sample_metadata(patient_id=patient, diagnosis=DIAGNOSIS if patient == ERASED_PATIENT else "naevus"))
        record = await vault.create_image(CLINICIAN, meta, "image/jpeg", body())
        images[record.id] = data
        return record.id

    erased = [await upload(ERASED_PATIENT, n) for n in range(4)]
    kept = [await upload(KEPT_PATIENT, 10 + n) for n in range(4)]
    await make_escrow(vault)
    await vault.backup(OPERATOR, tmp_path / "backup")
    shutil.copytree(tmp_path / "backup", tmp_path / "stolen-old-backup")
    report = await vault.erase_patient(DPO, ErasureRequest(ERASED_PATIENT, "Art. 17 request", override_retention=True))
    assert report.shredded == 4
    backups = [tmp_path / "backup", tmp_path / "stolen-old-backup"]

    disk_only = await carve(config.data_dir, [], erased, images)
    before = await carve(config.data_dir, backups, erased, images)
    # Documented exposure before the epoch: the old backup still holds the erased records'
    # blobs and wrapped keys, and the keyring still opens them.
    assert before["images"] == 4 and before["personal fields"] >= 4 and before["patient id testable"] >= 1, before

    await vault.run_epoch(OPERATOR)
    await make_escrow(vault)
    await vault.backup(OPERATOR, tmp_path / "backup")
    await vault.close()

    after = await carve(config.data_dir, backups, erased, images)
    assert after["images"] == 0 and after["personal fields"] == 0 and after["patient id testable"] == 0, (before, after)
    assert after["wrapped keys carved"] > after["keys opened"]  # old wraps are still on disk, and dead

    # The kept patient is intact and findable.
    vault = await open_vault(config)
    try:
        from vault.search import SearchQuery

        page = await vault.search(CLINICIAN, SearchQuery(patient_id=KEPT_PATIENT, limit=50))
        assert sorted(r.id for r in page.items) == sorted(kept)
        for rid in kept:
            handle = await vault.open_image(CLINICIAN, rid)
            assert b"".join([p async for p in handle.stream()]) == images[rid]
    finally:
        await vault.close()
    print(f"\ndisk thief, data directory only, before the epoch: {disk_only}"
          f"\ndisk thief, with the backups, before the epoch: {before}\ndisk thief, after it: {after}")
