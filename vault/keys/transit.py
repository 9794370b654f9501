"""KEK provider backed by a HashiCorp Vault / OpenBao Transit key (the only module importing hvac).

The KEK never leaves the KMS: data keys are sent to Transit to be wrapped and unwrapped. The
wrapped form is Transit's own ciphertext string, stored verbatim: ``vault:v<N>:<base64>``.

Endpoints used (paths relative to ``/v1/<mount>``), one provider method each:

==============================  ============================  =====================================
provider method                  Transit endpoint               policy capability needed
==============================  ============================  =====================================
wrap_data_keys                   POST encrypt/:name             update   (daemon policy)
unwrap_data_keys                 POST decrypt/:name             update   (daemon policy)
rewrap_data_keys                 POST rewrap/:name              update   (daemon policy)
status, check                    GET  keys/:name                read     (daemon policy)
check (create_key=True)          POST keys/:name                create   (operator policy)
rotate                           POST keys/:name/rotate         update   (operator policy)
retire                           POST keys/:name/config, then   update   (operator policy)
                                 POST keys/:name/trim
==============================  ============================  =====================================

See ``deploy/vault-policy.hcl`` and ``deploy/vault-operator-policy.hcl``. The daemon policy has
no ``create`` on ``encrypt/:name``: with ``create``, Transit *upserts* a missing key on encrypt,
so a mistyped key name would silently start a fresh KEK.

Concurrency: hvac is synchronous, so every HTTP call runs in a small dedicated thread pool,
never on the event loop; each worker thread has its own hvac client (requests sessions are not
meant to be shared between threads). Single wrap/unwrap/rewrap requests are coalesced by one
``MicroBatcher`` per operation into Transit ``batch_input`` calls.

Failure mapping (here and nowhere else):

- connection errors, timeouts, 5xx, 429, sealed/standby (503) → ``KmsUnavailable``, retried up
  to ``max_retries`` times with jittered exponential backoff, never past ``retry_budget``
  seconds in total;
- 403/401 (bad token, missing policy) → ``KmsUnavailable`` naming the problem, never retried
  (with AppRole, one fresh login is attempted first, for an expired token);
- 404 / "encryption key not found" → ``KmsUnavailable`` naming the key and mount, not retried;
- a per-item ``error`` in ``batch_results`` → ``KeyMaterialError`` for that item only.

Transit answers a batch with some failed items with HTTP 400 (encrypt, decrypt) or 200
(rewrap), in both cases with every item's result in ``batch_results``; both are read the same.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import concurrent.futures
import random
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import hvac
import hvac.exceptions
import requests.exceptions

from vault.errors import InvalidRequest, KeyMaterialError, KmsUnavailable
from vault.keys.base import DEK_BYTES, KeyProvider, KeyStatus
from vault.keys.batching import MicroBatcher

__all__ = ["TransitConfig", "TransitKeyProvider"]

T = TypeVar("T")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_MOUNT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)*$")
_WRAPPED_TRANSIT = re.compile(r"^vault:v[1-9][0-9]{0,9}:[A-Za-z0-9+/]+={0,2}$")
# Key types whose encrypt/decrypt/rewrap work without a derivation context.
_SYMMETRIC_TYPES = {"aes128-gcm96", "aes256-gcm96", "chacha20-poly1305", "xchacha20-poly1305"}


@dataclass(frozen=True)
class TransitConfig:
    """Where the Transit key is and how to talk to it.

    Authentication: AppRole if both ``role_id`` and ``secret_id`` are set (logged in at
    ``auth/<approle_mount>/login``; a ``token`` also present, e.g. from ``VAULT_TOKEN``, is then
    ignored), else ``token``. Secrets are excluded from ``repr``.

    Timeouts: each HTTP call gives up after ``connect_timeout`` to connect and ``read_timeout``
    between bytes (hvac's default would be 30 s). Retries stop after ``max_retries`` or when the
    next attempt could end past ``retry_budget`` seconds after the first one started.
    """

    addr: str
    token: str | None = field(default=None, repr=False)
    role_id: str | None = None
    secret_id: str | None = field(default=None, repr=False)
    mount: str = "transit"
    key_name: str = "imagevault-kek"
    ca_cert: str | None = None
    create_key: bool = False
    connect_timeout: float = 2.0
    read_timeout: float = 5.0
    max_retries: int = 3
    batch_size: int = 256
    batch_delay: float = 0.003
    retry_budget: float = 6.0
    max_in_flight: int = 4
    approle_mount: str = "approle"

    @property
    def uses_approle(self) -> bool:
        """AppRole wins when both role_id and secret_id are set (a token is then ignored)."""
        return bool(self.role_id and self.secret_id)

    def __post_init__(self) -> None:
        if not self.addr.startswith(("http://", "https://")):
            raise ValueError("addr must be an http:// or https:// URL")
        if not (self.token or self.uses_approle):
            if self.role_id or self.secret_id:
                raise ValueError("AppRole needs both role_id and secret_id")
            raise ValueError("give either token or role_id and secret_id (AppRole)")
        if not _NAME.match(self.key_name):
            raise ValueError(f"invalid transit key name {self.key_name!r}")
        if not _MOUNT.match(self.mount):
            raise ValueError(f"invalid transit mount {self.mount!r}")
        if not _MOUNT.match(self.approle_mount):
            raise ValueError(f"invalid approle mount {self.approle_mount!r}")
        if self.connect_timeout <= 0 or self.read_timeout <= 0 or self.retry_budget <= 0:
            raise ValueError("timeouts and retry_budget must be positive")
        if self.max_retries < 0:
            raise ValueError("max_retries must not be negative")
        if not 1 <= self.batch_size <= 10_000:
            raise ValueError("batch_size must be between 1 and 10000")
        if self.batch_delay < 0:
            raise ValueError("batch_delay must not be negative")
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")


class _PermissionDenied(KmsUnavailable):
    """403/401 from the KMS. Private: callers see a KmsUnavailable."""


class _KeyNotFound(KmsUnavailable):
    """The key does not exist (404 on keys/:name, "encryption key not found")."""


class _MountNotFound(KmsUnavailable):
    """Nothing is mounted at the configured transit mount."""


@dataclass(frozen=True)
class _Failure:
    kind: str  # key of TransitKeyProvider.errors
    retryable: bool
    error: Exception


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _batch_results(payload: Any) -> list[dict[str, Any]] | None:
    """``data.batch_results`` of a Transit response, or None if the response has none."""
    if not isinstance(payload, dict):
        return None
    data = payload.get("data")
    if not isinstance(data, dict):
        return None
    results = data.get("batch_results")
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        return None
    return results


def _server_message(exc: hvac.exceptions.VaultError) -> str:
    errors = [e.strip() for e in (exc.errors or []) if isinstance(e, str) and e.strip()]
    return "; ".join(errors) or type(exc).__name__


class TransitKeyProvider(KeyProvider):
    """KEK = a Transit key; DEKs are wrapped by Transit in micro-batches.

    Counters for metrics and tests: ``calls`` (HTTP requests made, by endpoint kind:
    ``encrypt``, ``decrypt``, ``rewrap``, ``read_key``, ``create_key``, ``rotate``, ``config``,
    ``trim``, ``login``, ``lookup_self``; retries count as calls) and ``errors`` (failures by
    kind: ``timeout``, ``connection``, ``tls``, ``sealed``, ``server_error``, ``forbidden``,
    ``not_found``, ``invalid_request``, ``item_error``, ``unexpected``).
    """

    name = "transit"
    prefers_pooling = True

    def __init__(self, config: TransitConfig) -> None:
        self.config = config
        self.calls: collections.Counter[str] = collections.Counter()
        # When Transit last answered a request, and the failure count then (``probe``).
        self._answered: tuple[float, int] | None = None
        self.errors: collections.Counter[str] = collections.Counter()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=config.max_in_flight, thread_name_prefix="imagevault-transit"
        )
        self._local = threading.local()
        self._clients: list[hvac.Client] = []
        self._clients_lock = threading.Lock()
        self._token: str | None = None if config.uses_approle else config.token
        self._token_generation = 0
        self._closed = False
        batcher_options = {
            "max_batch": config.batch_size,
            "delay": config.batch_delay,
            "max_in_flight": config.max_in_flight,
            "closed_error": lambda: KmsUnavailable("key provider is closed"),
        }
        self._wrap_batcher: MicroBatcher[bytes, str] = MicroBatcher(
            self._flush_wrap, **batcher_options
        )
        self._unwrap_batcher: MicroBatcher[str, bytes] = MicroBatcher(
            self._flush_unwrap, **batcher_options
        )
        self._rewrap_batcher: MicroBatcher[str, str] = MicroBatcher(
            self._flush_rewrap, **batcher_options
        )
        quoted = urllib.parse.quote(config.key_name, safe="")
        self._config_path = f"/v1/{config.mount}/keys/{quoted}/config"

    def __repr__(self) -> str:
        c = self.config
        return f"TransitKeyProvider(addr={c.addr!r}, mount={c.mount!r}, key_name={c.key_name!r})"

    @property
    def batch_stats(self) -> dict[str, dict[str, int]]:
        """Flush counts and sizes per batcher (wrap, unwrap, rewrap)."""
        return {
            "wrap": self._wrap_batcher.stats.as_dict(),
            "unwrap": self._unwrap_batcher.stats.as_dict(),
            "rewrap": self._rewrap_batcher.stats.as_dict(),
        }

    # -- the HTTP boundary ------------------------------------------------------------------

    def _thread_client(self) -> hvac.Client:
        """This worker thread's hvac client, rebuilt when the token changed (AppRole login)."""
        local = self._local
        if getattr(local, "generation", None) != self._token_generation:
            old = getattr(local, "client", None)
            if old is not None:
                old.adapter.close()
            client = hvac.Client(
                url=self.config.addr,
                # "" rather than None: hvac would otherwise pick up VAULT_TOKEN from the env.
                token=self._token or "",
                # None lets hvac honour VAULT_CACERT/VAULT_CAPATH, else verify with the system CAs.
                verify=self.config.ca_cert,
                timeout=(self.config.connect_timeout, self.config.read_timeout),
            )
            local.client, local.generation = client, self._token_generation
            with self._clients_lock:
                self._clients.append(client)
        return local.client

    def _invoke(self, call: Callable[[hvac.Client], T], batch: bool) -> T | dict[str, Any]:
        """Run one hvac call in a worker thread.

        A batch request in which some items failed comes back as HTTP 400 with every item's
        result in the body; it is returned as a normal response (the exception, whose text
        may hold the plaintexts of the items that succeeded, is dropped here).
        """
        client = self._thread_client()
        try:
            return call(client)
        except hvac.exceptions.InvalidRequest as exc:
            if batch and _batch_results(exc.json) is not None:
                return exc.json
            raise

    def _classify(
        self, kind: str, exc: BaseException, invalid: Callable[[str], Exception]
    ) -> _Failure:
        c = self.config
        key = f"transit key '{c.key_name}' at mount '{c.mount}'"
        if isinstance(exc, requests.exceptions.SSLError):
            return _Failure("tls", False, KmsUnavailable("TLS to the KMS failed (check ca_cert)"))
        if isinstance(exc, requests.exceptions.Timeout):
            return _Failure(
                "timeout",
                True,
                KmsUnavailable(
                    f"KMS did not answer in time (connect {c.connect_timeout:g} s, "
                    f"read {c.read_timeout:g} s)"
                ),
            )
        if isinstance(
            exc, (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError)
        ):
            error = KmsUnavailable("KMS unreachable (connection failed)")
            return _Failure("connection", True, error)
        if isinstance(exc, hvac.exceptions.VaultDown):
            return _Failure("sealed", True, KmsUnavailable("KMS is sealed or not active (503)"))
        if isinstance(exc, hvac.exceptions.VaultNotInitialized):
            return _Failure("server_error", False, KmsUnavailable("KMS is not initialized"))
        if isinstance(
            exc,
            (
                hvac.exceptions.InternalServerError,
                hvac.exceptions.BadGateway,
                hvac.exceptions.RateLimitExceeded,
                hvac.exceptions.UnexpectedError,
            ),
        ):
            return _Failure("server_error", True, KmsUnavailable("KMS server error"))
        if isinstance(exc, (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized)):
            error = _PermissionDenied(f"permission denied by KMS for {kind} on {key}")
            return _Failure("forbidden", False, error)
        if isinstance(exc, hvac.exceptions.InvalidPath):
            message = _server_message(exc)
            if "no handler for route" in message:
                error = _MountNotFound(f"no transit engine mounted at '{c.mount}'")
            else:
                error = _KeyNotFound(f"transit key '{c.key_name}' not found at mount '{c.mount}'")
            return _Failure("not_found", False, error)
        if isinstance(exc, hvac.exceptions.InvalidRequest):
            message = _server_message(exc)
            if "key not found" in message:
                error = _KeyNotFound(f"transit key '{c.key_name}' not found at mount '{c.mount}'")
                return _Failure("not_found", False, error)
            return _Failure("invalid_request", False, invalid(f"KMS refused {kind}: {message}"))
        error = KmsUnavailable(f"unexpected KMS failure ({type(exc).__name__})")
        return _Failure("unexpected", False, error)

    async def _request(
        self,
        kind: str,
        call: Callable[[hvac.Client], T],
        *,
        retry: bool = True,
        batch: bool = False,
        invalid: Callable[[str], Exception] = InvalidRequest,
    ) -> T | dict[str, Any]:
        """One logical Transit request: executor call + error mapping + bounded retries.

        ``retry=False`` for requests that must not be repeated blindly (rotate: a timed-out
        rotate may have happened). ``invalid`` builds the error for a 400 that is not a
        per-item batch result.
        """
        if self._closed:
            raise KmsUnavailable("key provider is closed")
        if self._token is None:
            await self._login()
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        attempt = 0
        relogged = False
        while True:
            attempt_started = time.monotonic()
            generation = self._token_generation
            self.calls[kind] += 1
            try:
                result = await loop.run_in_executor(self._executor, self._invoke, call, batch)
                self._answered = (time.monotonic(), self.failures())
                return result
            except Exception as exc:  # noqa: BLE001 - every failure is classified below
                failure = self._classify(kind, exc, invalid)
                self.errors[failure.kind] += 1
                if failure.kind == "forbidden" and self.config.uses_approle and not relogged:
                    # An AppRole token may have expired: log in once more, then try again.
                    relogged = True
                    if generation == self._token_generation:
                        await self._login()
                    continue
                now = time.monotonic()
                backoff = self._backoff(attempt)
                last_duration = now - attempt_started
                give_up = (
                    not (retry and failure.retryable)
                    or attempt >= self.config.max_retries
                    or (now - started) + backoff + last_duration > self.config.retry_budget
                )
                if give_up:
                    raise failure.error from exc
                attempt += 1
                await asyncio.sleep(backoff)

    @staticmethod
    def _backoff(attempt: int) -> float:
        """Exponential backoff with jitter: 50 ms, 100 ms, 200 ms... (±50 %), capped at 1 s."""
        base = min(1.0, 0.05 * (2**attempt))
        return base / 2 + random.uniform(0, base / 2)

    async def _login(self) -> None:
        """AppRole login: POST auth/<approle_mount>/login; the token is kept in memory only."""
        c = self.config
        if not c.uses_approle:
            raise KmsUnavailable("no KMS token configured")

        def login(client: hvac.Client) -> Any:
            return client.auth.approle.login(
                role_id=c.role_id,
                secret_id=c.secret_id,
                use_token=False,
                mount_point=c.approle_mount,
            )

        self.calls["login"] += 1
        try:
            response = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._invoke, login, False
            )
        except Exception as exc:  # noqa: BLE001
            failure = self._classify("login", exc, InvalidRequest)
            self.errors[failure.kind] += 1
            if failure.kind in ("forbidden", "invalid_request"):
                message = "KMS rejected the AppRole credentials (role_id/secret_id)"
                raise KmsUnavailable(message) from exc
            raise failure.error from exc
        try:
            token = response["auth"]["client_token"]
        except (KeyError, TypeError):
            raise KmsUnavailable("unexpected AppRole login response from KMS") from None
        self._token = token
        self._token_generation += 1

    # -- reading and managing the key ----------------------------------------------------

    async def _read_key(self) -> dict[str, Any]:
        """GET /transit/keys/:name → the key's metadata (versions, limits; never key bytes)."""
        c = self.config
        response = await self._request(
            "read_key",
            lambda client: client.secrets.transit.read_key(c.key_name, mount_point=c.mount),
        )
        data = response.get("data") if isinstance(response, dict) else None
        if not isinstance(data, dict) or not isinstance(data.get("latest_version"), int):
            raise KmsUnavailable("unexpected response from KMS for read_key")
        return data

    async def check(self) -> None:
        """Start-up / readiness check: GET /transit/keys/:name; create the key if allowed.

        With ``create_key=True`` a missing key is created with POST /transit/keys/:name
        (type aes256-gcm96, not exportable, no plaintext backup). Raises ``KmsUnavailable``
        naming the problem: key not found at mount, no transit mount, token rejected, token
        lacks permission, key unusable (wrong type or derived), KMS down.
        """
        c = self.config
        try:
            data = await self._read_key()
        except _KeyNotFound:
            if not c.create_key:
                raise
            await self._create_key()
            data = await self._read_key()
        except _PermissionDenied as exc:
            raise await self._explain_forbidden() from exc
        key_type = data.get("type")
        if key_type not in _SYMMETRIC_TYPES or not data.get("supports_encryption", True):
            raise KmsUnavailable(
                f"transit key '{c.key_name}' has type {key_type!r}, which cannot wrap data keys"
            )
        if data.get("derived"):
            raise KmsUnavailable(
                f"transit key '{c.key_name}' uses key derivation, which imagevault does not support"
            )

    async def _explain_forbidden(self) -> KmsUnavailable:
        """Tell a rejected token from a valid one lacking policy (GET auth/token/lookup-self).

        lookup-self is allowed by Vault's "default" policy; a token created without it is
        reported as rejected.
        """
        c = self.config
        try:
            await self._request(
                "lookup_self", lambda client: client.auth.token.lookup_self(), retry=False
            )
        except _PermissionDenied:
            return KmsUnavailable(
                "permission denied by KMS: the token was rejected (invalid, expired or revoked)"
            )
        except KmsUnavailable as exc:
            return exc
        return KmsUnavailable(
            f"permission denied by KMS: the token may not read transit key '{c.key_name}' "
            f"at mount '{c.mount}' (check its policy)"
        )

    async def _create_key(self) -> None:
        """POST /transit/keys/:name with type aes256-gcm96, exportable and plaintext backup off."""
        c = self.config
        await self._request(
            "create_key",
            lambda client: client.secrets.transit.create_key(
                c.key_name,
                key_type="aes256-gcm96",
                exportable=False,
                allow_plaintext_backup=False,
                mount_point=c.mount,
            ),
        )

    async def status(self) -> KeyStatus:
        """GET /transit/keys/:name → latest_version, min_decryption_version, ``keys`` map.

        ``versions`` lists the versions Transit still reports (``keys`` hides versions below
        min_decryption_version even before they are trimmed).
        """
        c = self.config
        data = await self._read_key()
        versions = tuple(sorted(int(v) for v in (data.get("keys") or {})))
        return KeyStatus(
            provider=self.name,
            key_name=c.key_name,
            current_version=data["latest_version"],
            min_decryption_version=int(data.get("min_decryption_version") or 1),
            versions=versions,
            details={
                "addr": c.addr,
                "mount": c.mount,
                "type": str(data.get("type")),
                "min_encryption_version": str(data.get("min_encryption_version", 0)),
                "min_available_version": str(data.get("min_available_version", 0)),
            },
        )

    async def rotate(self) -> int:
        """POST /transit/keys/:name/rotate; return the new latest_version. Never retried."""
        c = self.config
        response = await self._request(
            "rotate",
            lambda client: client.secrets.transit.rotate_key(c.key_name, mount_point=c.mount),
            retry=False,
        )
        data = response.get("data") if isinstance(response, dict) else None
        if isinstance(data, dict) and isinstance(data.get("latest_version"), int):
            return data["latest_version"]
        # Older servers answer 204 without a body.
        return (await self._read_key())["latest_version"]

    async def retire(self, below: int) -> None:
        """Destroy every key version < ``below`` in Transit (the shred epoch). Idempotent.

        1. POST /transit/keys/:name/config with min_decryption_version = below and
           min_encryption_version = below (trim refuses to run while min_encryption_version
           is 0; encryption still uses the latest version, which is >= below).
        2. POST /transit/keys/:name/trim with min_available_version = below.

        Step 1 alone is NOT enough: min_decryption_version can be lowered again and the old
        versions come back. Step 2 deletes them; Transit then refuses to lower
        min_decryption_version below min_available_version ever again.
        """
        if isinstance(below, bool) or not isinstance(below, int):
            raise TypeError("below must be an int")
        c = self.config
        data = await self._read_key()
        latest = data["latest_version"]
        if below > latest:
            raise InvalidRequest(
                f"cannot retire the current key version {latest} (asked below={below})"
            )
        min_available = int(data.get("min_available_version") or 0)
        min_decryption = int(data.get("min_decryption_version") or 1)
        min_encryption = int(data.get("min_encryption_version") or 0)
        if below <= max(min_available, 1):
            return
        settings = {
            "min_decryption_version": max(below, min_decryption),
            "min_encryption_version": max(below, min_encryption),
        }
        # hvac's update_key_configuration wrongly rejects min_encryption_version equal to
        # min_decryption_version (the server accepts it), so this one call goes to the adapter.
        await self._request(
            "config", lambda client: client.adapter.post(self._config_path, json=settings)
        )
        await self._request(
            "trim",
            lambda client: client.secrets.transit.trim_key(c.key_name, below, mount_point=c.mount),
        )

    # -- wrapping through the batchers -----------------------------------------------------

    async def wrap_data_keys(self, deks: Sequence[bytes]) -> list[str]:
        """Wrap DEKs under the latest version (POST /transit/encrypt/:name, batch_input).

        Concurrent callers share Transit calls through the wrap batcher.
        """
        for dek in deks:
            if not isinstance(dek, (bytes, bytearray)) or len(dek) != DEK_BYTES:
                raise ValueError(f"a data key must be {DEK_BYTES} bytes")
        results = await self._wrap_batcher.submit_many([bytes(d) for d in deks])
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results  # type: ignore[return-value]

    async def unwrap_data_keys(self, wrapped: Sequence[str]) -> list[bytes | KeyMaterialError]:
        """Unwrap (POST /transit/decrypt/:name, batch_input); bad items come back in place."""
        return await self._per_item(wrapped, self._unwrap_batcher)  # type: ignore[return-value]

    async def rewrap_data_keys(self, wrapped: Sequence[str]) -> list[str | KeyMaterialError]:
        """Re-wrap under the latest version (POST /transit/rewrap/:name); the DEK never leaves
        Transit. Bad items (retired, corrupt, foreign) come back in place."""
        return await self._per_item(wrapped, self._rewrap_batcher)  # type: ignore[return-value]

    async def _per_item(self, wrapped: Sequence[str], batcher: MicroBatcher[str, Any]) -> list[Any]:
        results: list[Any] = [None] * len(wrapped)
        to_send: list[tuple[int, str]] = []
        for index, item in enumerate(wrapped):
            # Never send a foreign string (e.g. a local: key) to the KMS.
            if isinstance(item, str) and _WRAPPED_TRANSIT.match(item):
                to_send.append((index, item))
            else:
                results[index] = KeyMaterialError("wrapped key is not a transit (vault:) key")
        answers = await batcher.submit_many([item for _, item in to_send])
        for (index, _), answer in zip(to_send, answers):
            if isinstance(answer, BaseException) and not isinstance(answer, KeyMaterialError):
                raise answer  # unavailability fails the whole call
            results[index] = answer
        return results

    async def _flush_wrap(self, deks: list[bytes]) -> list[str | Exception]:
        c = self.config
        batch_input = [{"plaintext": _b64(dek)} for dek in deks]
        response = await self._request(
            "encrypt",
            lambda client: client.secrets.transit.encrypt_data(
                c.key_name, batch_input=batch_input, mount_point=c.mount
            ),
            batch=True,
            invalid=KeyMaterialError,
        )
        return self._ciphertexts(self._items(response, len(deks), "encrypt"), "encrypt", "wrap")

    async def _flush_unwrap(self, wrapped: list[str]) -> list[bytes | Exception]:
        c = self.config
        batch_input = [{"ciphertext": w} for w in wrapped]
        response = await self._request(
            "decrypt",
            lambda client: client.secrets.transit.decrypt_data(
                c.key_name, batch_input=batch_input, mount_point=c.mount
            ),
            batch=True,
            invalid=KeyMaterialError,
        )
        out: list[bytes | Exception] = []
        for item in self._items(response, len(wrapped), "decrypt"):
            if item.get("error"):
                self.errors["item_error"] += 1
                out.append(KeyMaterialError(f"KMS refused to unwrap a data key: {item['error']}"))
                continue
            try:
                dek = base64.b64decode(item.get("plaintext") or "", validate=True)
            except (binascii.Error, ValueError, TypeError):
                dek = b""
            if len(dek) != DEK_BYTES:
                out.append(KeyMaterialError("unwrapped data key has the wrong length"))
            else:
                out.append(dek)
        return out

    async def _flush_rewrap(self, wrapped: list[str]) -> list[str | Exception]:
        c = self.config
        batch_input = [{"ciphertext": w} for w in wrapped]
        response = await self._request(
            "rewrap",
            lambda client: client.secrets.transit.rewrap_data(
                c.key_name, None, batch_input=batch_input, mount_point=c.mount
            ),
            batch=True,
            invalid=KeyMaterialError,
        )
        return self._ciphertexts(self._items(response, len(wrapped), "rewrap"), "rewrap", "rewrap")

    def _ciphertexts(self, items: list[dict[str, Any]], kind: str, verb: str) -> list[str | Exception]:
        """Per-item results of an encrypt or rewrap batch: a ciphertext, or that item's error."""
        out: list[str | Exception] = []
        for item in items:
            ciphertext = item.get("ciphertext")
            if item.get("error"):
                self.errors["item_error"] += 1
                out.append(KeyMaterialError(f"KMS refused to {verb} a data key: {item['error']}"))
            elif isinstance(ciphertext, str) and _WRAPPED_TRANSIT.match(ciphertext):
                out.append(ciphertext)
            else:
                out.append(KmsUnavailable(f"unexpected response from KMS for {kind}"))
        return out

    @staticmethod
    def _items(response: Any, expected: int, kind: str) -> list[dict[str, Any]]:
        results = _batch_results(response)
        if results is None or len(results) != expected:
            raise KmsUnavailable(f"unexpected response from KMS for {kind}")
        return results

    # -- lifecycle ----------------------------------------------------------------------------

    def failures(self) -> int:
        return sum(n for kind, n in self.errors.items() if kind != "item_error")

    async def probe(self, fresh_within: float) -> None:
        """Readiness: an answer to any request within ``fresh_within`` seconds, with no failure
        since, is taken as the answer; else ``check``. Under traffic the probe then costs
        Transit nothing (a ``read_key`` per worker every few seconds was a third of a busy
        two-worker daemon's Transit calls); idle, it checks as before."""
        answered = self._answered
        if answered is not None and time.monotonic() - answered[0] < fresh_within and answered[1] == self.failures():
            return
        await self.check()

    async def close(self) -> None:
        """Fail queued requests, wait for flushes in flight, stop the threads, close sessions."""
        if self._closed:
            return
        for batcher in (self._wrap_batcher, self._unwrap_batcher, self._rewrap_batcher):
            await batcher.close()
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.adapter.close()
