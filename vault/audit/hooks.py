"""How operations reach the audit trail: one decorator, so no entry point can forget.

``@audited(AuditAction.READ, requires=Action.READ)`` on a ``Vault`` method checks that the
caller's role may do this at all, then appends one entry per call, after the call: outcome
``ok`` with the record ids the result names, or the API error code of the exception it raised
(a 403 or a 404 is worth auditing too) with the record id the caller asked for. The entry is
durable before the method's result is handed back, so a read is never served unaudited (an
audit failure fails the request).

A method may add details (never personal data: flags, counts, digests, field names) for its
own entry with ``note(...)``; the decorator collects them through a context variable, which
the awaited method shares with its wrapper because both run in the same task.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

from vault.audit.chain import GLOBAL_SCOPE, Actor, AuditAction, AuditEvent, record_ids_of
from vault.errors import ImageVaultError

if TYPE_CHECKING:
    from vault.audit.store import AuditLog
    from vault.auth import Action, Principal

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
_NOTES: ContextVar[dict[str, Any] | None] = ContextVar("audit_notes", default=None)


def actor_of(principal: Principal) -> Actor:
    return Actor(principal.name, principal.role.value, principal.tenant, principal.via, principal.on_behalf_of)


def note(**details: Any) -> None:
    """Add details to the entry of the audited call in progress (no-op outside one)."""
    notes = _NOTES.get()
    if notes is not None:
        notes.update(details)


REASON_DOMAIN = b"imagevault/v1/audit-reason\x00"


def reason_mac(index_key: bytes, reason: str | None) -> str | None:
    """What the trail keeps of a free-text reason, which may name the patient.

    Not the text, and not a plain SHA-256 either: "erase 943 476 5919" has a guessable shape
    and ten digits are brute-forced in hours. HMAC-SHA256 under the tenant's index key (only
    ever stored wrapped by the KEK), with a domain prefix so it can never equal a patient's
    blind-index value, lets the service confirm that a reason filed in the DPO's case record is
    the one given, and lets no one else test guesses."""
    if reason is None:
        return None
    return hmac.new(index_key, REASON_DOMAIN + reason.encode(), hashlib.sha256).hexdigest()


def ids_of(result: Any) -> tuple[str, ...]:
    """The record ids an operation's result is about (API form)."""
    if result is None:
        return ()
    audit_ids = getattr(result, "audit_ids", None)
    if audit_ids is not None:
        return tuple(audit_ids)
    record = getattr(result, "record", None)  # ImageHandle
    if record is not None and hasattr(record, "id"):
        return (record.id,)
    items = getattr(result, "items", None)  # SearchPage
    if isinstance(items, list):
        return tuple(r.id for r in items)
    rid = getattr(result, "id", None)  # Record, ShredResult
    return (rid,) if isinstance(rid, str) else ()


async def append_event(
    audit: AuditLog, principal: Principal, action: AuditAction, record_ids: Iterable[str] = (),
    outcome: str = "ok", details: dict[str, Any] | None = None, *, scope: str | None = None,
) -> None:
    await audit.append(AuditEvent(
        action.value, actor_of(principal), principal.tenant if scope is None else scope,
        record_ids_of(list(record_ids)), outcome, details or {},
    ))


def search_filters(query: Any) -> dict[str, Any]:
    """Which filters a search used (their names, never their values: one may be a patient id)."""
    names = [f.name for f in dataclasses.fields(query)
             if f.name not in ("limit", "cursor") and getattr(query, f.name) is not None]
    return {"filters": names}


def note_update(before: Any, after: Any, patch: Any) -> None:
    """Details of a metadata update (``StoredRecord`` before/after): which fields the patch
    named, and the before/after of consent flags, legal hold and retain_until when they
    changed. Field *names* only for the rest: values may be personal data."""
    details: dict[str, Any] = {"fields": sorted(patch) if isinstance(patch, dict) else []}
    old, new = before.metadata, after.metadata
    if old.consent != new.consent:
        details["consent"] = {"before": old.consent.to_json(), "after": new.consent.to_json()}
    if old.legal_hold != new.legal_hold:
        details["legal_hold"] = {"before": old.legal_hold, "after": new.legal_hold}
    if before.retain_until != after.retain_until:
        details["retain_until"] = {"before": before.retain_until, "after": after.retain_until}
    note(**details)


def audited(
    action: AuditAction, *, requires: Action | None = None, record_arg: bool = False, global_scope: bool = False,
    scope: Callable[..., str] | None = None, describe: Callable[..., dict[str, Any]] | None = None,
) -> Callable[[F], F]:
    """Check and audit every call of a method whose first argument is the ``Principal``; the
    method's object must have an ``audit`` attribute (the ``AuditLog``).

    ``record_arg``: the first argument after the principal is the record id asked for; a
    refusal names it (a result names its own records).
    ``requires``: the permission the caller's role needs for the operation at all (a refusal
    is audited like any other outcome). Rules that depend on what is asked stay in the service.
    ``global_scope``: the operation concerns no single tenant (key rotation, a sweep summary).
    ``scope``: the entry's scope derived from the call's other arguments (a token's tenant); a
    result with an ``audit_scope`` attribute names its own (a revoked token's tenant).
    Refusals for want of ``requires`` are always in the caller's own scope.
    ``describe``: details derived from the call's other arguments (never their personal values).
    """

    def decorate(method: F) -> F:
        @functools.wraps(method)
        async def wrapper(self: Any, principal: Principal, *args: Any, **kwargs: Any) -> Any:
            notes: dict[str, Any] = describe(*args, **kwargs) if describe is not None else {}
            token = _NOTES.set(notes)
            if scope is not None:
                entry_scope: str | None = scope(*args, **kwargs)
            else:
                entry_scope = GLOBAL_SCOPE if global_scope else None
            asked = [a for a in args[:1] if isinstance(a, str)] if record_arg else []
            try:
                if requires is not None and not principal.may(requires):
                    # A refusal belongs to the caller's tenant (its auditors see the attempt),
                    # even for an operation whose entries are otherwise global.
                    entry_scope = principal.tenant
                    principal.require(requires)
                result = await method(self, principal, *args, **kwargs)
            except ImageVaultError as exc:
                try:
                    await append_event(self.audit, principal, action, asked, exc.code, notes, scope=entry_scope)
                except ImageVaultError:
                    log.error("audit append failed for a refused %s", action.value)
                raise
            finally:
                _NOTES.reset(token)
            entry_scope = getattr(result, "audit_scope", None) or entry_scope
            await append_event(self.audit, principal, action, ids_of(result) or asked, "ok", notes, scope=entry_scope)
            return result

        return wrapper  # type: ignore[return-value]

    return decorate
