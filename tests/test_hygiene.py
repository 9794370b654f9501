"""Secrets hygiene: after a full scenario, no DEK, KEK, token or patient identifier appears in the
daemon's logs (at DEBUG), in /metrics, or in any error message it sent."""

from __future__ import annotations

import base64
import json

import aiohttp

from tests.conftest import PATIENT_IDS, jpeg, random_image, sample_metadata, upload_body
from tests.test_daemon import Daemon, cli
from vault.index.lmdb import Index
from vault.keys.keyring import LocalKeyring


def forms(secret: bytes) -> list[bytes]:
    """The ways a key could leak into text: raw, hex, base64 (standard and url-safe)."""
    return [secret, secret.hex().encode(), base64.b64encode(secret), base64.urlsafe_b64encode(secret).rstrip(b"=")]


async def test_no_secret_or_personal_data_leaks_into_logs_metrics_or_errors(tmp_path):
    data_dir = tmp_path / "data"
    cli(data_dir, "init")
    token = cli(data_dir, "token", "create", "--tenant", "clinic-a", "--role", "clinician", "--name", "c").stdout.strip()
    dpo = cli(data_dir, "token", "create", "--tenant", "clinic-a", "--role", "dpo", "--name", "d").stdout.strip()
    operator = cli(data_dir, "token", "create", "--tenant", "clinic-a", "--role", "operator", "--name", "o").stdout.strip()
    daemon = Daemon(data_dir, tmp_path / "daemon.log")
    bodies: list[bytes] = []
    try:
        url = daemon.url
        clinician = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as session:
            async def call(method, path, **kwargs):
                async with session.request(method, url + path, **kwargs) as response:
                    body = await response.read()
                    if response.status >= 400:
                        bodies.append(body)
                    return response.status, body

            ids = []
            for n, patient in enumerate(PATIENT_IDS):
                # An expired retention date: the dpo's to set at upload.
                status, body = await call("POST", "/v1/images", headers={"Authorization": f"Bearer {dpo}"}, data=upload_body(
                    random_image(70_000, n), sample_metadata(patient_id=patient, retention={"class": "until", "until": "2020-01-01"})))
                assert status == 201
                ids.append(json.loads(body)["id"])
            for patient in PATIENT_IDS:
                await call("POST", "/v1/search", headers=clinician, json={"patient_id": patient})
            await call("GET", f"/v1/images/{ids[0]}", headers=clinician)
            await call("PATCH", f"/v1/images/{ids[1]}/metadata", headers={"Authorization": f"Bearer {dpo}"}, json={"patient_id": PATIENT_IDS[0]})
            await call("DELETE", f"/v1/images/{ids[2]}", headers=clinician)
            await call("POST", "/v1/admin/keys/rotate", headers={"Authorization": f"Bearer {operator}"})
            # Mistakes that carry secrets or personal data must not be echoed or logged.
            await call("GET", "/v1/admin/keys", headers={"Authorization": f"Bearer {token}x"})
            await call("GET", "/v1/images/" + ids[0], headers={"Authorization": f"Bearer {dpo[:-3]}"})
            await call("POST", "/v1/images", headers=clinician, data=upload_body(jpeg(b"x"), sample_metadata(modality=PATIENT_IDS[0])))
            await call("POST", "/v1/images", headers=clinician, data=upload_body(jpeg(b"x"), {**sample_metadata(), PATIENT_IDS[1]: True}))
            await call("POST", "/v1/search", headers=clinician, json={"patient_id": PATIENT_IDS[2], "limit": PATIENT_IDS[2]})
            await call("POST", "/v1/search", headers=clinician, data=PATIENT_IDS[1].encode())
            await call("DELETE", f"/v1/images/{ids[0]}?reason={PATIENT_IDS[0]}", headers=clinician)
            status, metrics = await call("GET", "/metrics")
    finally:
        assert daemon.stop() == 0
    log = (tmp_path / "daemon.log").read_bytes()
    assert b"DEBUG" in log or b"INFO" in log

    # Every secret the scenario involved: tokens, DEKs (unwrapped with the real keyring), KEKs.
    keyring = LocalKeyring.open(data_dir / "keys")
    index = Index(data_dir / "index", map_size=16 << 20)
    try:
        wrapped = index.read(lambda t: [w for _, w in t.iter_deks()] + [d["index_key"] for _, d in t.iter_docs(b"tenants")])
    finally:
        index.close()
    deks = await keyring.unwrap_data_keys(wrapped)
    secrets = [s.encode() for s in (token, dpo, operator)]
    for dek in deks:
        assert isinstance(dek, bytes)
        secrets.extend(forms(dek))
    for kek in keyring._keks.values():
        secrets.extend(forms(kek))
    secrets.extend(forms((data_dir / "keys" / "master.key").read_bytes()))
    personal = [p.encode() for p in PATIENT_IDS] + [p.replace(" ", "").encode() for p in PATIENT_IDS]
    haystacks = {"log": log, "metrics": metrics, "errors": b"\n".join(bodies)}
    assert len(bodies) >= 6
    for where, text in haystacks.items():
        for needle in secrets + personal:
            assert needle not in text, f"a secret or patient identifier leaked into {where}"
