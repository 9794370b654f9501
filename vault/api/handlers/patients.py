"""``/v1/patients/*`` (role dpo): erase a patient, place or lift a legal hold, export everything,
report every access to a patient's records.

The patient identifier arrives only in the JSON body. The export is streamed as it is built
(``vault/export.py``). Roles are checked by the facade, which audits a refusal too. If a blob
fails its integrity check after the first bytes have gone out, the connection is aborted so the
client sees a truncated transfer, never a complete-looking zip.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from vault.api.handlers.common import json_response, principal_of, read_json, vault_of
from vault.audit.chain import AuditAction
from vault.auth import Action
from vault.errors import ImageVaultError
from vault.idempotency import KEY_HEADER, REPLAYED_HEADER, parse_idempotency_key
from vault.patients import parse_access_report, parse_erasure, parse_export, parse_hold

log = logging.getLogger(__name__)


async def erase_patient(request: web.Request) -> web.Response:
    principal = principal_of(request)
    await vault_of(request).refuse_unless(principal, Action.ERASE_PATIENT, AuditAction.ERASE)
    idempotency_key = parse_idempotency_key(request.headers.get(KEY_HEADER))
    erasure = parse_erasure(await read_json(request))
    report = await vault_of(request).erase_patient(principal, erasure, idempotency_key=idempotency_key)
    return json_response(report.to_json(), headers={REPLAYED_HEADER: "true"} if report.replayed else None)


async def legal_hold(request: web.Request) -> web.Response:
    principal = principal_of(request)
    await vault_of(request).refuse_unless(principal, Action.LEGAL_HOLD, AuditAction.LEGAL_HOLD)
    hold = parse_hold(await read_json(request))
    report = await vault_of(request).set_patient_hold(principal, hold)
    return json_response(report.to_json())


async def export_patient(request: web.Request) -> web.StreamResponse:
    principal = principal_of(request)
    await vault_of(request).refuse_unless(principal, Action.EXPORT, AuditAction.EXPORT)
    wanted = parse_export(await read_json(request))
    export = await vault_of(request).export_patient(principal, wanted)
    return await _stream(request, export.chunks(), "export", {
        "Content-Type": "application/zip",
        "Content-Disposition": f'attachment; filename="subject-access-export-{export.generated_at[:10]}.zip"',
    })


async def access_report(request: web.Request) -> web.StreamResponse:
    principal = principal_of(request)
    await vault_of(request).refuse_unless(principal, Action.ACCESS_REPORT, AuditAction.ACCESS_REPORT)
    wanted = parse_access_report(await read_json(request))
    report = await vault_of(request).access_report(principal, wanted)
    return await _stream(request, report.chunks(), "access report", {"Content-Type": "application/json"})


async def _stream(request: web.Request, chunks: Any, what: str, headers: dict[str, str]) -> web.StreamResponse:
    """A streamed answer that may carry personal data. An error after the status is sent can
    only be told by a body cut short: the connection is closed mid-transfer."""
    response = web.StreamResponse(status=200, headers={
        **headers, "Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff",
    })
    response.enable_chunked_encoding()
    await response.prepare(request)
    try:
        async for piece in chunks:
            await response.write(piece)
    except ImageVaultError as exc:
        log.error("%s aborted: %s", what, exc.code)
        if request.transport is not None:
            request.transport.close()
        raise ConnectionResetError(f"{what} aborted after the response had started") from None
    await response.write_eof()
    return response
