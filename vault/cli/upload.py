"""``imagevault upload --url URL DIR``: one imaging session from a folder, through ``vault.client``.

A camera station or a clinician's laptop sends a total-body session (60-120 photographs) over
clinic Wi-Fi; this command is the session-sized client. What each image is comes from
``session.csv`` in the folder (or ``--manifest``), else from the folder layout: the name of the
sub-folder an image sits in is its body site. The patient id comes from the CSV or from
``--patient-file``, and the token from ``IMAGEVAULT_TOKEN`` or ``--token-file``, never from the
command line, where ``ps`` and shell history would show them.

A journal (``.imagevault-upload.json`` in the folder) records, per file, its SHA-256, the
idempotency key used for it and, once stored, its record id; nothing else, and no patient id.
Re-running the command after an interruption skips what is stored and sends the rest with the
same keys, so an upload whose response was lost is answered by the server from its first try
instead of stored twice.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vault.cli.common import CliError, add_json_option, emit, progress_bar, say
from vault.config import Config
from vault.files import write_atomic
from vault.metadata import MODALITIES

JOURNAL = ".imagevault-upload.json"
MANIFEST = "session.csv"
CONTENT_TYPES = {
    ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".tif": "image/tiff", ".tiff": "image/tiff",
    ".heic": "image/heic", ".heif": "image/heic", ".webp": "image/webp", ".dcm": "application/dicom",
    ".obj": "model/obj", ".ply": "model/ply",
}
CSV_FIELDS = ("file", "patient_id", "body_site", "body_site_code", "lesion_id", "modality", "captured_at", "tags")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("upload", parents=[common], help="upload a folder of images as one session (resumable)")
    p.add_argument("folder", help="the session's folder")
    p.add_argument("--url", required=True, help="the daemon's base URL, e.g. https://imagevault.example:8443")
    p.add_argument("--token-file", help="file holding the token (else the environment's IMAGEVAULT_TOKEN)")
    p.add_argument("--patient-file", help="file holding the patient id (else the CSV's patient_id column)")
    p.add_argument("--manifest", help=f"CSV describing the images (default: {MANIFEST} in the folder)")
    p.add_argument("--session-id", help="session id for every image (default: a new one, kept in the journal)")
    p.add_argument("--modality", default="clinical", choices=MODALITIES, help="modality where the CSV gives none")
    p.add_argument("--ca-file", help="CA bundle for the daemon's certificate")
    add_json_option(p)
    p.set_defaults(func=cmd_upload)


def cmd_upload(config: Config, args: argparse.Namespace) -> int:
    from vault.client import Client

    folder = Path(args.folder)
    if not folder.is_dir():
        raise CliError(f"{folder} is not a folder")
    token = _secret(args.token_file, "IMAGEVAULT_TOKEN", "a token: --token-file FILE or IMAGEVAULT_TOKEN")
    patient = Path(args.patient_file).read_text().strip() if args.patient_file else None
    images = _plan(folder, Path(args.manifest) if args.manifest else folder / MANIFEST, patient, args.modality)
    journal_path = folder / JOURNAL
    journal = _load_journal(journal_path)
    session = args.session_id or journal.get("session_id") or f"S-{uuid.uuid4().hex[:12]}"
    journal["session_id"] = session
    files: dict[str, Any] = journal.setdefault("files", {})
    todo = [image for image in images if files.get(image["file"], {}).get("record_id") is None]
    say(f"upload: {len(images)} image(s) in {folder}, {len(images) - len(todo)} already stored, session {session}")
    failed = 0
    with Client(args.url, token=token, verify=args.ca_file or True) as client, \
            progress_bar("upload", unit="image") as update:
        done = len(images) - len(todo)
        update(done, len(images))
        for image in todo:
            path = folder / image["file"]
            digest = _sha256(path)
            entry = files.get(image["file"])
            if entry is None or entry.get("sha256") != digest:
                # A new file, or one replaced since the last run: a new logical image, a new key.
                entry = {"sha256": digest, "idempotency_key": str(uuid.uuid4()), "record_id": None}
                files[image["file"]] = entry
                write_atomic(journal_path, _encode(journal))  # the key is durable before it is used
            metadata = {k: v for k, v in image["metadata"].items() if v not in (None, "")}
            metadata.setdefault("session_id", session)
            try:
                record = client.upload(path, metadata, content_type=image["content_type"],
                                       idempotency_key=entry["idempotency_key"], filename=path.name)
            except Exception as exc:  # noqa: BLE001 - one image's failure is reported, the session goes on
                failed += 1
                say(f"upload: {image['file']}: {getattr(exc, 'code', exc.__class__.__name__)}: "
                    f"{getattr(exc, 'message', '')}".rstrip(": "))
                continue
            entry["record_id"] = record["id"]
            write_atomic(journal_path, _encode(journal))
            done += 1
            update(done, len(images))
    stored = sum(1 for e in files.values() if e.get("record_id"))
    summary = f"upload: {stored} of {len(images)} stored" + (f", {failed} failed (run again to retry them)" if failed else "")
    emit(args, {"session_id": session, "images": len(images), "stored": stored, "failed": failed,
                "record_ids": sorted(e["record_id"] for e in files.values() if e.get("record_id"))}, summary)
    return 1 if failed else 0


def _secret(path: str | None, env: str, what: str) -> str:
    if path:
        return Path(path).read_text().strip()
    value = os.environ.get(env, "").strip()
    if not value:
        raise CliError(f"upload needs {what}")
    return value


def _plan(folder: Path, manifest: Path, patient: str | None, modality: str) -> list[dict[str, Any]]:
    """Every image of the session with its metadata, in a stable order."""
    rows: dict[str, dict[str, str]] = {}
    if manifest.exists():
        with open(manifest, newline="") as handle:
            reader = csv.DictReader(handle)
            unknown = set(reader.fieldnames or ()) - set(CSV_FIELDS)
            if unknown or "file" not in (reader.fieldnames or ()):
                raise CliError(f"{manifest.name}: columns must be among {', '.join(CSV_FIELDS)} (and include file); "
                               f"unknown: {', '.join(sorted(unknown)) or 'none'}")
            for row in reader:
                rows[row["file"]] = row
        names = sorted(rows)
    else:
        names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                       if p.is_file() and p.suffix.lower() in CONTENT_TYPES)
    if not names:
        raise CliError(f"no images in {folder} (extensions: {', '.join(sorted(CONTENT_TYPES))})")
    images = []
    for name in names:
        path = folder / name
        content_type = CONTENT_TYPES.get(path.suffix.lower())
        if content_type is None or not path.is_file():
            raise CliError(f"{name}: not an image file this command knows")
        row = rows.get(name, {})
        patient_id = row.get("patient_id") or patient
        if not patient_id:
            raise CliError("the patient id comes from --patient-file or the CSV's patient_id column")
        body_site = row.get("body_site") or (Path(name).parent.name if Path(name).parent != Path(".") else "")
        if not body_site:
            raise CliError(f"{name}: no body site (a body_site column, or put it in a sub-folder named after it)")
        captured = row.get("captured_at") or datetime.fromtimestamp(path.stat().st_mtime, timezone.utc) \
            .strftime("%Y-%m-%dT%H:%M:%SZ")
        tags = [t for t in (row.get("tags") or "").split(";") if t]
        images.append({"file": name, "content_type": content_type, "metadata": {
            "patient_id": patient_id, "captured_at": captured, "modality": row.get("modality") or modality,
            "body_site": body_site, "body_site_code": row.get("body_site_code"), "lesion_id": row.get("lesion_id"),
            "tags": tags or None,
        }})
    return images


def _load_journal(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"version": 1}
    try:
        journal = json.loads(path.read_text())
    except ValueError as exc:
        raise CliError(f"{path} is not a journal this command wrote; move it away to start over") from exc
    if journal.get("version") != 1:
        raise CliError(f"{path}: unknown journal version")
    return journal


def _encode(journal: dict[str, Any]) -> bytes:
    return json.dumps(journal, indent=1, sort_keys=True).encode()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while piece := handle.read(1 << 20):
            digest.update(piece)
    return digest.hexdigest()
