"""The KeyProvider interface every key-encryption-key (KEK) provider implements.

A provider wraps and unwraps 32-byte data keys (DEKs) under a versioned KEK it holds and never
reveals. Wrapped keys are ASCII strings that carry the KEK version:
``<scheme>:v<N>:<payload>`` (``local:v3:...`` for the embedded keyring, ``vault:v3:...`` for
Transit). All operations are batched: callers pass lists and get lists back in the same order.

Failure model (see ``vault.errors``): unavailability (KMS down, sealed, timing out) raises
``KmsUnavailable``; a wrapped key that cannot be opened (retired version, corrupt, foreign)
raises ``KeyMaterialError``. Batch methods raise for the whole batch only on unavailability; a
per-item failure of ``unwrap_data_keys`` is returned in place as a ``KeyMaterialError``
instance so one bad item fails only that item.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from vault.errors import InvalidRequest, KeyMaterialError

DEK_BYTES = 32

_WRAPPED = re.compile(r"^([a-z]+):v([0-9]+):")


def key_version_of(wrapped: str) -> int:
    """The KEK version a wrapped key was made under (``local:v3:...`` → 3)."""
    match = _WRAPPED.match(wrapped)
    if match is None:
        raise KeyMaterialError("malformed wrapped key")
    return int(match.group(2))


@dataclass(frozen=True)
class KeyStatus:
    provider: str  # "local" | "transit"
    key_name: str
    current_version: int
    min_decryption_version: int
    versions: tuple[int, ...]  # versions that can still decrypt
    details: dict[str, str] = field(default_factory=dict)


class KeyProvider(abc.ABC):
    """A KEK holder. Implementations must be safe to call concurrently from the event loop."""

    name: str = "abstract"
    # Remote KMSs are worth pre-wrapping keys for (vault.keys.pool); a local keyring is not.
    prefers_pooling: bool = False

    def failures(self) -> int:
        """How many availability failures (not per-item errors) this provider has seen."""
        return 0

    @abc.abstractmethod
    async def wrap_data_keys(self, deks: Sequence[bytes]) -> list[str]:
        """Wrap each DEK under the current KEK version."""

    @abc.abstractmethod
    async def unwrap_data_keys(self, wrapped: Sequence[str]) -> list[bytes | KeyMaterialError]:
        """Unwrap each key; an item that cannot be opened comes back as a KeyMaterialError."""

    @abc.abstractmethod
    async def rewrap_data_keys(self, wrapped: Sequence[str]) -> list[str | KeyMaterialError]:
        """Re-wrap under the current KEK version without revealing the DEK to the caller."""

    @abc.abstractmethod
    async def rotate(self) -> int:
        """Create a new KEK version, make it current, and return its number."""

    @abc.abstractmethod
    async def retire(self, below: int) -> None:
        """Make every KEK version below ``below`` permanently unusable (the shred epoch)."""

    @abc.abstractmethod
    async def status(self) -> KeyStatus:
        """Versions and state, for ``/v1/admin/keys`` and ``imagevault keys status``."""

    def export_escrow(self, passphrase: str | bytes, **limits: int) -> bytes:
        """The live KEK versions sealed under a passphrase, for a provider that holds its keys
        itself (the local keyring); a remote KMS's keys are backed up with the KMS."""
        raise InvalidRequest(f"key escrow is for the local keyring; {self.name} keys are backed up with the KMS")

    async def check(self) -> None:
        """Raise KmsUnavailable if the KMS cannot serve requests now (start-up)."""
        await self.status()

    async def probe(self, fresh_within: float) -> None:
        """``check`` for the readiness probe, which runs every ``fresh_within`` seconds; a
        remote provider may take an answer it had within that time as the answer."""
        await self.check()

    async def close(self) -> None:
        """Release connections and threads."""

    # Conveniences over the batched calls.
    async def wrap_data_key(self, dek: bytes) -> str:
        return (await self.wrap_data_keys([dek]))[0]

    async def unwrap_data_key(self, wrapped: str) -> bytes:
        result = (await self.unwrap_data_keys([wrapped]))[0]
        if isinstance(result, KeyMaterialError):
            raise result
        return result
