"""The embedded local keyring: the default KEK provider when no KMS is configured.

The keyring lives in one directory (the caller passes ``<data_dir>/keys``)::

    keys/               mode 0700
    ├── master.key      32 random bytes, mode 0600   (absent in passphrase mode)
    ├── keyring.json    versioned KEKs sealed under the master key, mode 0600
    └── keyring.lock    advisory lock serialising writers across processes

The master key is either the contents of ``master.key`` or a passphrase stretched with
Argon2id (salt and cost parameters stored in ``keyring.json``). Every KEK version is 32 random
bytes sealed under the master key; a data key (DEK) is wrapped under one KEK version. The
byte-level layouts and the reasons behind them are in ``docs/keyring.md``.

Concurrency: all operations are local and fast, so they run synchronously inside the async
methods. Writers (create, rotate, retire) hold a ``threading.Lock`` against other tasks of this
process *and* an ``fcntl.flock`` on ``keyring.lock`` against other processes (the CLI may rotate
while the daemon runs); each write re-reads the file under the lock first, so no update is lost.
Readers never lock: ``keyring.json`` is only ever replaced atomically, and every operation
first compares ``os.stat`` of the file with what was last loaded and reloads on a change, so a
rotation made by another process is seen by a running daemon on its next call.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hmac
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import nacl.bindings
import nacl.encoding
import nacl.exceptions
import nacl.hash
import nacl.pwhash.argon2id

from vault.errors import InvalidRequest, KeyMaterialError
from vault.files import fsync_dir, write_atomic
from vault.keys.base import DEK_BYTES, KeyProvider, KeyStatus

__all__ = ["LocalKeyring"]

FORMAT_NAME = "imagevault-keyring"
FORMAT_VERSION = 1

MASTER_FILE = "master.key"
KEYRING_FILE = "keyring.json"
LOCK_FILE = "keyring.lock"

MASTER_BYTES = 32
KEK_BYTES = 32
SALT_BYTES = nacl.pwhash.argon2id.SALTBYTES  # 16
NONCE_BYTES = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES  # 24
TAG_BYTES = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_ABYTES  # 16

# Argon2id "moderate" limits (3 passes, 256 MiB): about 0.8 s on one core here. Stored in the
# file, so a keyring created with other limits still opens after the defaults change.
DEFAULT_OPSLIMIT = nacl.pwhash.argon2id.OPSLIMIT_MODERATE
DEFAULT_MEMLIMIT = nacl.pwhash.argon2id.MEMLIMIT_MODERATE

# Domain-separation strings. Changing any of them makes every existing keyring unreadable.
_CHECK_INFO = b"imagevault keyring check v1"
_ESCROW_AAD_PREFIX = b"imagevault-escrow-kek local:v"
ESCROW_FORMAT = "imagevault-key-escrow"
ESCROW_VERSION = 1
_KEK_AAD_PREFIX = b"imagevault-kek local:v"
_DEK_AAD_PREFIX = b"imagevault-dek local:v"

SEALED_KEK_BYTES = NONCE_BYTES + KEK_BYTES + TAG_BYTES  # 72
WRAPPED_DEK_BYTES = NONCE_BYTES + DEK_BYTES + TAG_BYTES  # 72

_WRAPPED_LOCAL = re.compile(r"^local:v([1-9][0-9]{0,9}):([A-Za-z0-9+/]+={0,2})$")


# ---------------------------------------------------------------------------------------------
# Pure helpers: bytes in, bytes out.


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(text: str) -> bytes:
    """Strict standard base64 (no newlines, correct padding); raises ValueError otherwise."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError("invalid base64") from exc


def _check_value(master: bytes) -> bytes:
    """A keyed BLAKE2b of a constant: proves a candidate master key right without revealing it.

    A wrong key file or passphrase is reported at open time, clearly, instead of surfacing later
    as every unwrap failing.
    """
    return nacl.hash.blake2b(
        _CHECK_INFO, key=master, digest_size=32, encoder=nacl.encoding.RawEncoder
    )


def _aead_seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """XChaCha20-Poly1305 with a fresh random 24-byte nonce: returns ``nonce || ct || tag``.

    Nonce rule: 192-bit random nonces never collide in practice, so no counter state is kept.
    AAD rule: callers pass the version label the payload is stored under, so a payload moved to
    another label (or a label edited) fails authentication instead of opening.
    """
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        plaintext, aad, nonce, key
    )


def _aead_open(key: bytes, payload: bytes, aad: bytes) -> bytes:
    """Inverse of ``_aead_seal``; raises ``nacl.exceptions.CryptoError`` on any mismatch."""
    nonce, ciphertext = payload[:NONCE_BYTES], payload[NONCE_BYTES:]
    return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, aad, nonce, key)


def _kek_aad(version: int) -> bytes:
    return _KEK_AAD_PREFIX + str(version).encode("ascii")


def _dek_aad(version: int) -> bytes:
    return _DEK_AAD_PREFIX + str(version).encode("ascii")


def _derive_master(passphrase: str | bytes, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    secret = passphrase.encode("utf-8") if isinstance(passphrase, str) else passphrase
    return nacl.pwhash.argon2id.kdf(
        MASTER_BYTES, secret, salt, opslimit=opslimit, memlimit=memlimit
    )


# ---------------------------------------------------------------------------------------------
# The in-memory view of keyring.json.


class _Document:
    """A parsed, validated keyring.json (the sealed form; no key is opened here)."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw

    # Parsing validates every field, so later code can trust the types.
    @classmethod
    def parse(cls, data: bytes) -> _Document:
        try:
            raw = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise KeyMaterialError("keyring.json is corrupt: not valid JSON") from exc
        if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
            raise KeyMaterialError("keyring.json is corrupt: not an imagevault keyring")
        if raw.get("version") != FORMAT_VERSION:
            raise KeyMaterialError(
                f"keyring.json has unsupported format version {raw.get('version')!r}"
            )
        try:
            master = raw["master"]
            if master["kind"] not in ("file", "argon2id"):
                raise ValueError("master.kind")
            if master["kind"] == "argon2id":
                if len(_b64decode(master["salt"])) != SALT_BYTES:
                    raise ValueError("master.salt")
                limits = (master["opslimit"], master["memlimit"])
                if not all(isinstance(limit, int) for limit in limits):
                    raise ValueError("master limits")
            if len(_b64decode(raw["check"])) != 32:
                raise ValueError("check")
            current = raw["current_version"]
            minimum = raw["min_decryption_version"]
            if not (isinstance(current, int) and isinstance(minimum, int)):
                raise ValueError("versions")
            if not 1 <= minimum <= current:
                raise ValueError("min_decryption_version")
            versions = set()
            for name, entry in raw["keks"].items():
                version = int(name)
                if str(version) != name or version < minimum or version > current:
                    raise ValueError("keks key")
                if len(_b64decode(entry["sealed"])) != SEALED_KEK_BYTES:
                    raise ValueError("keks sealed")
                versions.add(version)
            if versions != set(range(minimum, current + 1)):
                raise ValueError("keks versions")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise KeyMaterialError(f"keyring.json is corrupt: bad field ({exc})") from None
        return cls(raw)

    @property
    def master_kind(self) -> str:
        return self.raw["master"]["kind"]

    @property
    def current_version(self) -> int:
        return self.raw["current_version"]

    @property
    def min_decryption_version(self) -> int:
        return self.raw["min_decryption_version"]

    def dumps(self) -> bytes:
        return (json.dumps(self.raw, indent=2, sort_keys=True) + "\n").encode("utf-8")


# ---------------------------------------------------------------------------------------------


class LocalKeyring(KeyProvider):
    """KEKs in a local file, sealed under a master key file or an Argon2id-stretched passphrase.

    Construct with :meth:`create` or :meth:`open`; the constructor is private.
    Wrapped DEK format: ``local:v<N>:<base64(nonce || ciphertext || tag)>`` where the AEAD is
    XChaCha20-Poly1305 under KEK version N with AAD ``b"imagevault-dek local:v<N>"``.
    """

    name = "local"

    def __init__(self, path: Path, master: bytes, document: _Document, stat: os.stat_result):
        self._path = path
        self._master = master
        self._write_lock = threading.Lock()
        self._doc = document
        self._stat_sig = self._signature(stat)
        self._keks = self._unseal_all(document)

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def exists(cls, path: str | os.PathLike[str]) -> bool:
        """Whether a keyring (its ``keyring.json``) exists in directory ``path``."""
        return (Path(path) / KEYRING_FILE).is_file()

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        passphrase: str | bytes | None = None,
        *,
        opslimit: int = DEFAULT_OPSLIMIT,
        memlimit: int = DEFAULT_MEMLIMIT,
    ) -> LocalKeyring:
        """Create a keyring with KEK version 1 in directory ``path``, or open the existing one.

        Without ``passphrase`` the master key is a new random ``master.key`` (mode 0600); with
        it, the master key is Argon2id(passphrase, random salt) and no key file is written.
        Idempotent: if ``keyring.json`` already exists this is :meth:`open`.
        """
        directory = Path(path)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # mkdir's mode is filtered by the umask and ignored for an existing directory.
        os.chmod(directory, 0o700)
        with _process_lock(directory):
            if cls.exists(directory):
                return cls.open(directory, passphrase)
            if passphrase is None:
                master = cls._load_or_create_master_file(directory)
                master_info: dict[str, Any] = {"kind": "file"}
            else:
                salt = secrets.token_bytes(SALT_BYTES)
                master = _derive_master(passphrase, salt, opslimit, memlimit)
                master_info = {
                    "kind": "argon2id",
                    "salt": _b64encode(salt),
                    "opslimit": opslimit,
                    "memlimit": memlimit,
                }
            now = int(time.time())
            raw = {
                "format": FORMAT_NAME,
                "version": FORMAT_VERSION,
                "master": master_info,
                "check": _b64encode(_check_value(master)),
                "current_version": 1,
                "min_decryption_version": 1,
                "keks": {"1": cls._new_kek_entry(master, 1, now)},
                "created_at": now,
                "updated_at": now,
            }
            document = _Document.parse(json.dumps(raw).encode())
            write_atomic(directory / KEYRING_FILE, document.dumps())
            return cls(directory, master, document, os.stat(directory / KEYRING_FILE))

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], passphrase: str | bytes | None = None
    ) -> LocalKeyring:
        """Open an existing keyring; raise ``KeyMaterialError`` naming the problem otherwise.

        Problems named: no keyring; corrupt file; passphrase required / not expected; key file
        missing or of the wrong size; master key (file or passphrase) does not match.
        """
        directory = Path(path)
        keyring_file = directory / KEYRING_FILE
        try:
            with open(keyring_file, "rb") as handle:
                stat = os.fstat(handle.fileno())
                data = handle.read()
        except FileNotFoundError:
            raise KeyMaterialError(
                f"no keyring at {directory} (run `imagevault init` to create one)"
            ) from None
        except OSError as exc:
            raise KeyMaterialError(f"cannot read keyring.json: {exc.strerror}") from None
        document = _Document.parse(data)
        master_info = document.raw["master"]
        if master_info["kind"] == "argon2id":
            if passphrase is None:
                raise KeyMaterialError(
                    "keyring is protected by a passphrase: set IMAGEVAULT_KEYRING_PASSPHRASE"
                )
            master = _derive_master(
                passphrase,
                _b64decode(master_info["salt"]),
                master_info["opslimit"],
                master_info["memlimit"],
            )
        else:
            if passphrase is not None:
                raise KeyMaterialError(
                    "keyring uses a key file (master.key) but a passphrase was given"
                )
            master = cls._read_master_file(directory)
        if not hmac.compare_digest(_check_value(master), _b64decode(document.raw["check"])):
            what = "passphrase" if master_info["kind"] == "argon2id" else "master.key"
            raise KeyMaterialError(f"keyring master key does not match (wrong {what})")
        return cls(directory, master, document, stat)

    @staticmethod
    def _read_master_file(directory: Path) -> bytes:
        try:
            with open(directory / MASTER_FILE, "rb") as handle:
                master = handle.read(MASTER_BYTES + 1)
        except FileNotFoundError:
            raise KeyMaterialError(f"keyring master key file {MASTER_FILE} is missing") from None
        except OSError as exc:
            raise KeyMaterialError(f"cannot read {MASTER_FILE}: {exc.strerror}") from None
        if len(master) != MASTER_BYTES:
            raise KeyMaterialError(f"{MASTER_FILE} must be exactly {MASTER_BYTES} bytes")
        return master

    @classmethod
    def _load_or_create_master_file(cls, directory: Path) -> bytes:
        """Reuse a master.key left by an interrupted create, else write a new one (0600)."""
        master_path = directory / MASTER_FILE
        if master_path.exists():
            return cls._read_master_file(directory)
        master = secrets.token_bytes(MASTER_BYTES)
        tmp = directory / f".{MASTER_FILE}.{secrets.token_hex(6)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, master)
            os.fsync(fd)
        finally:
            os.close(fd)
        # link() refuses to replace, so two racing creators can never swap the key under
        # each other (the process lock already prevents it; this is belt and braces).
        try:
            os.link(tmp, master_path)
        except FileExistsError:
            os.unlink(tmp)
            return cls._read_master_file(directory)
        os.unlink(tmp)
        fsync_dir(directory)
        return master

    @staticmethod
    def _new_kek_entry(master: bytes, version: int, now: int) -> dict[str, Any]:
        kek = secrets.token_bytes(KEK_BYTES)
        return {"sealed": _b64encode(_aead_seal(master, kek, _kek_aad(version))), "created_at": now}

    def _unseal_all(self, document: _Document) -> dict[int, bytes]:
        keks: dict[int, bytes] = {}
        for name, entry in document.raw["keks"].items():
            version = int(name)
            try:
                keks[version] = _aead_open(
                    self._master, _b64decode(entry["sealed"]), _kek_aad(version)
                )
            except nacl.exceptions.CryptoError:
                raise KeyMaterialError(
                    f"keyring.json is corrupt: KEK version {version} fails authentication"
                ) from None
        return keks

    # -- reloading ------------------------------------------------------------------------

    @staticmethod
    def _signature(stat: os.stat_result) -> tuple[int, int, int, int]:
        # Every write replaces the file, so the inode changes even within one mtime tick.
        return (stat.st_ino, stat.st_dev, stat.st_mtime_ns, stat.st_size)

    def _refresh(self) -> None:
        """Reload keyring.json if another writer replaced it since we last read it."""
        try:
            stat = os.stat(self._path / KEYRING_FILE)
        except FileNotFoundError:
            raise KeyMaterialError(f"keyring.json disappeared from {self._path}") from None
        if self._signature(stat) != self._stat_sig:
            self._reload()

    def _reload(self) -> None:
        with open(self._path / KEYRING_FILE, "rb") as handle:
            stat = os.fstat(handle.fileno())
            data = handle.read()
        document = _Document.parse(data)
        if not hmac.compare_digest(_check_value(self._master), _b64decode(document.raw["check"])):
            raise KeyMaterialError("keyring master key does not match (keyring.json was replaced)")
        keks = self._unseal_all(document)
        # Swap all three together; readers on the event loop never see a half update.
        self._doc, self._keks, self._stat_sig = document, keks, self._signature(stat)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[_Document]:
        """Serialise a read-modify-write against other tasks and other processes.

        Yields a fresh copy of the document read under the lock; the caller mutates ``raw``;
        on normal exit the result is written atomically and loaded.
        """
        with self._write_lock, _process_lock(self._path):
            self._reload()
            before = json.dumps(self._doc.raw, sort_keys=True)
            document = _Document(json.loads(before))
            yield document
            if json.dumps(document.raw, sort_keys=True) == before:
                return  # nothing changed (an idempotent no-op): do not touch the file
            document.raw["updated_at"] = int(time.time())
            checked = _Document.parse(document.dumps())
            write_atomic(self._path / KEYRING_FILE, checked.dumps())
            self._reload()

    # -- wrapping (pure over the loaded KEKs) --------------------------------------------

    def _wrap_one(self, dek: bytes) -> str:
        version = self._doc.current_version
        payload = _aead_seal(self._keks[version], dek, _dek_aad(version))
        return f"local:v{version}:{_b64encode(payload)}"

    def _unwrap_one(self, wrapped: str) -> bytes:
        if not isinstance(wrapped, str):
            raise KeyMaterialError("malformed wrapped key")
        match = _WRAPPED_LOCAL.match(wrapped)
        if match is None:
            if wrapped.startswith("local:"):
                raise KeyMaterialError("malformed wrapped key")
            raise KeyMaterialError("wrapped key is not from the local keyring")
        version = int(match.group(1))
        try:
            payload = _b64decode(match.group(2))
        except ValueError:
            raise KeyMaterialError("malformed wrapped key") from None
        if len(payload) != WRAPPED_DEK_BYTES:
            raise KeyMaterialError("malformed wrapped key")
        if version < self._doc.min_decryption_version:
            raise KeyMaterialError(f"key version {version} is retired")
        kek = self._keks.get(version)
        if kek is None:
            raise KeyMaterialError(f"unknown key version {version}")
        try:
            return _aead_open(kek, payload, _dek_aad(version))
        except nacl.exceptions.CryptoError:
            raise KeyMaterialError("wrapped key failed authentication") from None

    @staticmethod
    def _check_deks(deks: Sequence[bytes]) -> None:
        for dek in deks:
            if not isinstance(dek, (bytes, bytearray)) or len(dek) != DEK_BYTES:
                raise ValueError(f"a data key must be {DEK_BYTES} bytes")

    # -- KeyProvider ----------------------------------------------------------------------

    async def wrap_data_keys(self, deks: Sequence[bytes]) -> list[str]:
        """Wrap each 32-byte DEK under the current KEK version (``local:v<N>:...``)."""
        self._check_deks(deks)
        self._refresh()
        return [self._wrap_one(bytes(dek)) for dek in deks]

    async def unwrap_data_keys(self, wrapped: Sequence[str]) -> list[bytes | KeyMaterialError]:
        """Unwrap each key; malformed, foreign, unknown or retired ones come back as errors."""
        self._refresh()
        results: list[bytes | KeyMaterialError] = []
        for item in wrapped:
            try:
                results.append(self._unwrap_one(item))
            except KeyMaterialError as exc:
                results.append(exc)
        return results

    async def rewrap_data_keys(self, wrapped: Sequence[str]) -> list[str | KeyMaterialError]:
        """Re-wrap each key under the current KEK version; failures come back in place."""
        self._refresh()
        results: list[str | KeyMaterialError] = []
        for item in wrapped:
            try:
                results.append(self._wrap_one(self._unwrap_one(item)))
            except KeyMaterialError as exc:
                results.append(exc)
        return results

    async def rotate(self) -> int:
        """Add KEK version current+1, make it current, persist; return the new version."""
        with self._writing() as document:
            version = document.raw["current_version"] + 1
            document.raw["keks"][str(version)] = self._new_kek_entry(
                self._master, version, int(time.time())
            )
            document.raw["current_version"] = version
        return version

    async def retire(self, below: int) -> None:
        """Destroy every KEK version < ``below``: removed from keyring.json, not just disabled.

        ``below`` may be at most the current version (the current KEK is never retired).
        Retiring below the existing minimum is a no-op, so the call is idempotent.
        """
        if isinstance(below, bool) or not isinstance(below, int):
            raise TypeError("below must be an int")
        with self._writing() as document:
            current = document.raw["current_version"]
            if below > current:
                raise InvalidRequest(
                    f"cannot retire the current key version {current} (asked below={below})"
                )
            if below <= document.raw["min_decryption_version"]:
                return
            for version in range(document.raw["min_decryption_version"], below):
                document.raw["keks"].pop(str(version), None)
            document.raw["min_decryption_version"] = below

    # -- escrow ---------------------------------------------------------------------------

    def export_escrow(
        self, passphrase: str | bytes, *, opslimit: int = DEFAULT_OPSLIMIT, memlimit: int = DEFAULT_MEMLIMIT,
    ) -> bytes:
        """The KEK versions that can still decrypt, sealed under a key stretched from
        ``passphrase`` (docs/keyring.md, "Key escrow"). Only live versions exist in the keyring,
        so an escrow made after a retirement cannot revive what the retirement destroyed."""
        self._refresh()
        salt = secrets.token_bytes(SALT_BYTES)
        key = _derive_master(passphrase, salt, opslimit, memlimit)
        doc = self._doc
        raw = {
            "format": ESCROW_FORMAT,
            "version": ESCROW_VERSION,
            "created_at": int(time.time()),
            "kdf": {"kind": "argon2id", "salt": _b64encode(salt), "opslimit": opslimit, "memlimit": memlimit},
            "check": _b64encode(_check_value(key)),
            "current_version": doc.current_version,
            "min_decryption_version": doc.min_decryption_version,
            "keks": {
                str(version): {"sealed": _b64encode(_aead_seal(key, kek, _ESCROW_AAD_PREFIX + str(version).encode()))}
                for version, kek in sorted(self._keks.items())
            },
        }
        return (json.dumps(raw, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def import_escrow(
        cls, path: str | os.PathLike[str], escrow: bytes, passphrase: str | bytes, *,
        keyring_passphrase: str | bytes | None = None,
    ) -> LocalKeyring:
        """Create a keyring at ``path`` (which must hold none) from an escrow: the same KEK
        versions under a new master key (a new ``master.key``, or ``keyring_passphrase``)."""
        directory = Path(path)
        if cls.exists(directory):
            raise InvalidRequest(f"a keyring already exists at {directory}")
        try:
            raw = json.loads(escrow)
            if raw.get("format") != ESCROW_FORMAT or raw.get("version") != ESCROW_VERSION:
                raise ValueError("not an imagevault key escrow")
            kdf = raw["kdf"]
            key = _derive_master(passphrase, _b64decode(kdf["salt"]), kdf["opslimit"], kdf["memlimit"])
            current, minimum = int(raw["current_version"]), int(raw["min_decryption_version"])
            sealed = {int(v): _b64decode(entry["sealed"]) for v, entry in raw["keks"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise KeyMaterialError(f"key escrow is corrupt: {exc}") from None
        if not hmac.compare_digest(_check_value(key), _b64decode(raw["check"])):
            raise KeyMaterialError("key escrow passphrase does not match")
        if set(sealed) != set(range(minimum, current + 1)):
            raise KeyMaterialError("key escrow is corrupt: versions")
        try:
            keks = {v: _aead_open(key, data, _ESCROW_AAD_PREFIX + str(v).encode()) for v, data in sealed.items()}
        except nacl.exceptions.CryptoError:
            raise KeyMaterialError("key escrow is corrupt: a KEK fails authentication") from None
        keyring = cls.create(directory, passphrase=keyring_passphrase)
        with keyring._writing() as document:
            now = int(time.time())
            document.raw["keks"] = {
                str(v): {"sealed": _b64encode(_aead_seal(keyring._master, kek, _kek_aad(v))), "created_at": now}
                for v, kek in keks.items()
            }
            document.raw["current_version"] = current
            document.raw["min_decryption_version"] = minimum
        return keyring

    async def status(self) -> KeyStatus:
        self._refresh()
        doc = self._doc
        return KeyStatus(
            provider=self.name,
            key_name="local-keyring",
            current_version=doc.current_version,
            min_decryption_version=doc.min_decryption_version,
            versions=tuple(sorted(self._keks)),
            details={
                "path": str(self._path),
                "master": doc.master_kind,
                "format_version": str(FORMAT_VERSION),
            },
        )

    async def close(self) -> None:
        """Nothing to release: no threads, no connections, no open files between calls."""


@contextlib.contextmanager
def _process_lock(directory: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``keyring.lock`` (released when the fd is closed)."""
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
