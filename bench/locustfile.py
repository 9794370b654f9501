"""Realistic clinic traffic against one imagevault daemon (locust).

Users, one per clinic room or workstation:

- ``TotalBodyRoom``: a total-body photography session: a burst of 60-120 JPEGs of 2-8 MB,
  uploaded back to back under one session id for one patient; then the next patient.
  One session in ten is an aesthetic consultation whose retention ran out long ago
  (``{"class": "until", "until": "2020-01-01"}``), uploaded with the DPO token (only the DPO may
  set a date earlier than the medical default; without ``IV_DPO_TOKEN`` there are none): a
  clinician may delete those.
- ``DermoscopyFollowUp``: a follow-up visit: 2-4 dermoscopy images (1-3 MB) of one lesion,
  then the lesion's timeline (``POST /v1/search`` by patient and lesion).
- ``Viewer``: a clinician reviewing a patient: timeline search, then downloads (whole images,
  and a byte range as a viewer fetching a tile would).
- ``Eraser`` (exactly one): now and then deletes a record whose retention has expired (as a
  clinician), or erases one under retention with a DPO token (``override=true&reason=...``).
- ``FlakyNetworkRoom`` (exactly one): a camera station on clinic Wi-Fi: total-body sessions sent
  with ``vault.client`` (idempotency keys, retries, tus above 4 MB) through a proxy that cuts
  every connection at a random point (``bench/flaky.py``); one ledger line per image
  (``IV_FLAKY_LEDGER``), from which ``bench/flaky.py`` counts duplicated and lost images.

Configuration (environment, set by ``bench/run.py``):
``IV_TOKEN`` (clinician), ``IV_DPO_TOKEN``, ``IV_SESSION_MIN``/``IV_SESSION_MAX`` (images per
total-body session, default 60/120), ``IV_IMAGE_CACHE`` (image cache directory),
``IV_REQUEST_LOG`` (a JSON-lines file: one line per request with its start time, kind, bytes
moved and latency, from which ``bench/run.py`` draws throughput and percentiles over time),
``IV_FLAKY_LEDGER`` (the flaky-network user's ledger), ``IV_FLAKY_SESSION`` (images per
flaky-network session, default: as total-body sessions), ``IV_IMAGE_SMALL=1`` (tiny images
and a tus threshold to match: the smoke run of ``make test``).

    IV_TOKEN=... locust -f bench/locustfile.py --host http://127.0.0.1:8080 --headless -u 16 -r 4 -t 60s
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
import uuid
from collections import deque
from pathlib import Path

from locust import FastHttpUser, User, between, events, task

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import flaky
from bench.driver import clinical_metadata
from bench.images import DEFAULT_CACHE, default_specs, ensure_images, small_specs

TOKEN = os.environ.get("IV_TOKEN", "")
DPO_TOKEN = os.environ.get("IV_DPO_TOKEN", "")
SESSION_MIN = int(os.environ.get("IV_SESSION_MIN", "60"))
SESSION_MAX = int(os.environ.get("IV_SESSION_MAX", "120"))
EXPIRED = {"class": "until", "until": "2020-01-01"}
SMALL = os.environ.get("IV_IMAGE_SMALL") == "1"

_images: dict[str, list[bytes]] = {}
_images_lock = threading.Lock()


def images(kind: str) -> list[bytes]:
    """Cached images by kind (``total_body``, ``dermoscopic``), loaded once per process."""
    with _images_lock:
        if not _images:
            cache = Path(os.environ.get("IV_IMAGE_CACHE", str(DEFAULT_CACHE)))
            specs = small_specs(4) if SMALL else default_specs()
            for image in ensure_images(specs, cache, progress=not SMALL):
                _images.setdefault(image.kind, []).append(image.read())
    return _images[kind]


# Shared between users of this process (gevent: one thread, no locking needed).
UPLOADED: deque[tuple[str, int, int, str | None]] = deque(maxlen=5000)  # id, size, patient, lesion
ERASABLE: deque[str] = deque(maxlen=5000)  # ids uploaded with expired retention
PATIENTS: deque[tuple[int, str | None]] = deque(maxlen=500)


def multipart(metadata: dict, data: bytes, content_type: str = "image/jpeg") -> tuple[bytes, str]:
    """The upload body of docs/api.md: part ``metadata`` (JSON) first, then part ``file``."""
    boundary = uuid.uuid4().hex
    head = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\n"
        f"Content-Type: application/json\r\n\r\n{json.dumps(metadata)}\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"image.jpg\"\r\n"
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


# per-request log ----------------------------------------------------------------------------
_log_file = None


@events.init.add_listener
def _open_log(environment, **kwargs):
    global _log_file
    path = os.environ.get("IV_REQUEST_LOG")
    if path:
        _log_file = open(path, "a", buffering=1 << 16)  # noqa: SIM115 - open for the whole run


@events.quitting.add_listener
def _close_log(environment, **kwargs):
    if _log_file is not None:
        _log_file.flush()
    if _proxy:
        stats = flaky.stop_proxy(_proxy.pop())
        path = os.environ.get("IV_FLAKY_LEDGER")
        if path:
            flaky.proxy_stats_path(path).write_text(json.dumps(stats))


@events.request.add_listener
def _log_request(request_type, name, response_time, response_length, exception, context, start_time=None, **kwargs):
    if _log_file is None:
        return
    sent = (context or {}).get("sent", 0)
    _log_file.write(json.dumps({
        "t": round(start_time if start_time is not None else time.time() - response_time / 1000, 4),
        "name": name, "ms": round(response_time, 2), "up": sent,
        "down": response_length or 0, "ok": exception is None,
    }) + "\n")


class ImageVaultUser(FastHttpUser):
    abstract = True
    network_timeout = 300.0
    connection_timeout = 30.0

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or TOKEN}"}

    def upload(self, data: bytes, metadata: dict, name: str, token: str | None = None) -> dict | None:
        body, content_type = multipart(metadata, data)
        headers = {**self.auth(token), "Content-Type": content_type}
        with self.client.post("/v1/images", data=body, headers=headers, name=name,
                              context={"sent": len(data)}, catch_response=True) as response:
            if response.status_code != 201:
                response.failure(f"HTTP {response.status_code}")
                return None
            return response.json()

    def search(self, query: dict, name: str) -> list[dict]:
        with self.client.post("/v1/search", json=query, headers=self.auth(), name=name, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
                return []
            return response.json()["items"]


class TotalBodyRoom(ImageVaultUser):
    weight = 4
    wait_time = between(2, 6)  # the next patient gets undressed and positioned

    @task
    def session(self) -> None:
        patient = random.randrange(10**6)
        session_id = f"TB-{uuid.uuid4().hex[:10]}"
        expired = bool(DPO_TOKEN) and random.random() < 0.1
        pool = images("total_body")
        for index in range(random.randint(SESSION_MIN, SESSION_MAX)):
            data = random.choice(pool)
            meta = clinical_metadata(patient=patient, session_id=session_id, index=index,
                                     retention=EXPIRED if expired else None)
            record = self.upload(data, meta, "POST /v1/images [total body]", DPO_TOKEN if expired else None)
            if record is not None:
                UPLOADED.append((record["id"], record["size"], patient, None))
                if expired:
                    ERASABLE.append(record["id"])
        PATIENTS.append((patient, None))


class DermoscopyFollowUp(ImageVaultUser):
    weight = 3
    wait_time = between(3, 8)

    @task
    def follow_up(self) -> None:
        # Half the visits are follow-ups of a lesion seen before: its timeline grows.
        if PATIENTS and random.random() < 0.5:
            patient, lesion = random.choice(PATIENTS)
            lesion = lesion or f"L-{random.randrange(100):04d}"
        else:
            patient, lesion = random.randrange(10**6), f"L-{random.randrange(100):04d}"
        for index in range(random.randint(2, 4)):
            meta = clinical_metadata(patient=patient, modality="dermoscopic", lesion_id=lesion, index=index,
                                     session_id=None)
            meta["body_site"] = "left_upper_back"
            record = self.upload(random.choice(images("dermoscopic")), meta, "POST /v1/images [dermoscopy]")
            if record is not None:
                UPLOADED.append((record["id"], record["size"], patient, lesion))
        PATIENTS.append((patient, lesion))
        self.search({"patient_id": clinical_metadata(patient=patient)["patient_id"], "lesion_id": lesion},
                    "POST /v1/search [lesion timeline]")


class Viewer(ImageVaultUser):
    weight = 3
    wait_time = between(1, 4)

    @task
    def review(self) -> None:
        if not UPLOADED:
            time.sleep(1)
            return
        _, _, patient, _ = random.choice(UPLOADED)
        items = self.search({"patient_id": clinical_metadata(patient=patient)["patient_id"], "limit": 50},
                            "POST /v1/search [patient timeline]")
        if not items:
            return
        for item in random.sample(items, min(len(items), random.randint(1, 3))):
            self.client.get(f"/v1/images/{item['id']}", headers=self.auth(), name="GET /v1/images/{id}")
        item = random.choice(items)
        if item["size"] > 2 << 20:
            start = item["size"] // 3
            headers = {**self.auth(), "Range": f"bytes={start}-{start + (1 << 20) - 1}"}
            with self.client.get(f"/v1/images/{item['id']}", headers=headers, name="GET /v1/images/{id} [range]",
                                 catch_response=True) as response:
                if response.status_code != 206:
                    response.failure(f"HTTP {response.status_code}")


class Eraser(ImageVaultUser):
    fixed_count = 1
    weight = 1
    wait_time = between(3, 8)

    @task(3)
    def delete_expired(self) -> None:
        if not ERASABLE:
            return
        record_id = ERASABLE.popleft()
        with self.client.delete(f"/v1/images/{record_id}?reason=retention+expired", headers=self.auth(),
                                name="DELETE /v1/images/{id} [expired]", catch_response=True) as response:
            if response.status_code not in (200, 404):  # 404: a DPO erased it first
                response.failure(f"HTTP {response.status_code}")

    @task(1)
    def dpo_erasure(self) -> None:
        if not UPLOADED or not DPO_TOKEN:
            return
        record_id = UPLOADED[random.randrange(len(UPLOADED))][0]
        with self.client.delete(f"/v1/images/{record_id}?override=true&reason=patient+request+art.17",
                                headers=self.auth(DPO_TOKEN), name="DELETE /v1/images/{id} [dpo override]",
                                catch_response=True) as response:
            if response.status_code not in (200, 404):
                response.failure(f"HTTP {response.status_code}")


# the flaky network ---------------------------------------------------------------------------
_proxy: list = []  # the fault proxy process, started by the first flaky-network user
_proxy_url: list[str] = []
_ledger = None


def _flaky_url(host: str) -> str:
    global _ledger
    if not _proxy_url:
        process, url = flaky.start_proxy(host, request_cut_span=256 << 10 if SMALL else flaky.REQUEST_CUT_SPAN)
        _proxy.append(process)
        _proxy_url.append(url)
        path = os.environ.get("IV_FLAKY_LEDGER")
        if path:
            _ledger = open(path, "a", buffering=1)  # noqa: SIM115 - open for the whole run
    return _proxy_url[0]


def _note(**entry: object) -> None:
    if _ledger is not None:
        _ledger.write(json.dumps(entry) + "\n")


class FlakyNetworkRoom(User):
    """Not an HTTP user of locust's: every request goes through ``vault.client`` (its retries,
    idempotency keys and resumable uploads are what is under test), one image per task so a
    stopping run lands between images; each upload is reported to locust as one request."""

    fixed_count = 1
    weight = 1
    wait_time = between(0.5, 2)

    def on_start(self) -> None:
        from vault.client import Client, RetryPolicy

        threshold = 64 << 10 if SMALL else flaky.TUS_THRESHOLD
        self.vault = Client(_flaky_url(self.host), token=TOKEN, timeout=120.0, tus_threshold=threshold,
                            retry=RetryPolicy(attempts=12, base=0.05, cap=2.0))
        self.session_id, self.patient, self.left, self.index = "", 0, 0, 0

    def on_stop(self) -> None:
        self.vault.close()

    @task
    def photograph(self) -> None:
        from vault.client import ImagevaultClientError

        if self.left == 0:
            self.patient = random.randrange(10**6)
            self.session_id = f"FN-{uuid.uuid4().hex[:10]}"
            size = os.environ.get("IV_FLAKY_SESSION")
            self.left = int(size) if size else random.randint(SESSION_MIN, SESSION_MAX)
            self.index = 0
        data = random.choice(images("total_body"))
        marker = f"{flaky.MARKER_PREFIX}{uuid.uuid4().hex[:16]}"
        meta = flaky.metadata(clinical_metadata(patient=self.patient, session_id=self.session_id, index=self.index),
                              marker)
        tus = len(data) >= (64 << 10 if SMALL else flaky.TUS_THRESHOLD)
        _note(marker=marker, session=self.session_id, size=len(data), tus=tus)
        started = time.perf_counter()
        error: Exception | None = None
        try:
            record = self.vault.upload(data, meta, content_type="image/jpeg")
        except ImagevaultClientError as exc:
            error = exc
            _note(marker=marker, outcome="gave_up", error=exc.__class__.__name__)
        else:
            _note(marker=marker, outcome="stored", record=record["id"])
        self.left -= 1
        self.index += 1
        self.environment.events.request.fire(
            request_type="UPLOAD", name="vault.client upload [flaky network]", response_time=(time.perf_counter() - started) * 1000,
            response_length=0, exception=error, context={"sent": len(data)},
        )
