"""The data directory's identity: which key store, blob store and index engine its data belongs to.

``imagevault init`` writes ``<data_dir>/identity`` once everything it made exists; every command
and the daemon compare the configuration with it before they open the key provider, the blob
store or the index, and refuse a difference with one line naming the setting
(:class:`vault.config.ConfigError`, exit status 78). So a Transit data directory opened with the
default ``kms = local`` is refused instead of getting a second, empty keyring whose keys open
nothing; a daemon pointed at the wrong bucket is refused instead of serving records whose blobs
are elsewhere.

The file is protected by a SHA-256 checksum, not a MAC: it guards against configuration
mistakes and damaged files, not an attacker. Someone who can write the data directory can also
replace the index or the keyring, and a forged identity gains them nothing that the real checks
do not stop (blobs are authenticated under their data keys, index records by the integrity key,
the KMS by its own credentials). A MAC under a KMS key would also have to be checked *before* the
configured KMS is known to be the right one, which is the question the file answers.

A data directory made by a release without this file gets one at its first open, from what is
actually there: a local keyring's files mean ``kms = local``, their absence ``kms = transit``.
The format is specified in docs/format.md ("Data directory identity").
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from urllib.parse import urlsplit

from vault.config import Config, ConfigError
from vault.files import write_atomic
from vault.index.schema import SCHEMA_VERSION
from vault.store.format import FORMAT_VERSION

log = logging.getLogger(__name__)

IDENTITY_FILE = "identity"
MAGIC = b"imagevault data directory identity\n"
VERSION = 1
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_VALUE = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no space: names, hosts, buckets, numbers
# The local keyring's files (vault/keys/keyring.py); either one means a keyring was created here.
KEYRING_FILES = ("keyring.json", "master.key")


@dataclass(frozen=True)
class DataDirIdentity:
    """Field names are the configuration settings they are compared with ("" = not used)."""

    kms: str  # local | transit
    vault_mount: str  # transit only
    vault_key: str  # transit only
    store: str  # fs | s3
    s3_endpoint: str  # s3 only: host[:port] of the endpoint, "aws" when none is configured
    s3_bucket: str  # s3 only
    index_engine: str  # lmdb
    blob_format: int  # vault/store/format.py FORMAT_VERSION of the blobs written
    index_schema: int  # vault/index/schema.py SCHEMA_VERSION of the index

    def describe(self) -> str:
        kms = "local keyring" if self.kms == "local" else f"Transit key {self.vault_mount}/{self.vault_key}"
        store = "filesystem blobs" if self.store == "fs" else f"S3 bucket {self.s3_bucket} at {self.s3_endpoint}"
        return f"{kms}, {store}, {self.index_engine} index"


# Compared with the configuration, in this order; the format versions are checked separately.
COMPARED = ("kms", "vault_mount", "vault_key", "store", "s3_endpoint", "s3_bucket", "index_engine")


def endpoint_host(endpoint: str | None) -> str:
    if not endpoint:
        return "aws"
    return urlsplit(endpoint).netloc.lower() or endpoint


def of_config(config: Config) -> DataDirIdentity:
    """The identity the configuration describes (with this release's format versions)."""
    transit = config.kms == "transit"
    s3 = config.store == "s3"
    return DataDirIdentity(
        kms=config.kms,
        vault_mount=config.vault_mount if transit else "",
        vault_key=config.vault_key if transit else "",
        store=config.store,
        s3_endpoint=endpoint_host(config.s3_endpoint) if s3 else "",
        s3_bucket=config.s3_bucket if s3 else "",
        index_engine=config.index_engine,
        blob_format=FORMAT_VERSION,
        index_schema=SCHEMA_VERSION,
    )


# bytes in, bytes out ---------------------------------------------------------------------
def encode(identity: DataDirIdentity) -> bytes:
    body = MAGIC + b"version=%d\n" % VERSION
    for name, value in sorted((f.name, getattr(identity, f.name)) for f in fields(DataDirIdentity)):
        text = str(value)
        if text == "":
            continue
        if not _VALUE.fullmatch(text):
            raise ValueError(f"{name} cannot be recorded in the identity file (printable ASCII without spaces)")
        body += f"{name}={text}\n".encode("ascii")
    return body + b"sha256=" + hashlib.sha256(body).hexdigest().encode("ascii") + b"\n"


def decode(data: bytes) -> DataDirIdentity:
    """Parse and check an identity file; ``ValueError`` naming what is wrong."""
    if not data.startswith(MAGIC):
        raise ValueError("not an imagevault identity file")
    body, sep, tail = data.rpartition(b"sha256=")
    if not sep or not re.fullmatch(rb"[0-9a-f]{64}\n", tail):
        raise ValueError("its checksum line is missing")
    if hashlib.sha256(body).hexdigest().encode("ascii") != tail[:64]:
        raise ValueError("its checksum does not match (the file was damaged or edited)")
    values: dict[str, str] = {}
    for line in body[len(MAGIC):].decode("ascii", "strict").splitlines():
        name, sep, value = line.partition("=")
        if not sep or not _NAME.fullmatch(name) or not _VALUE.fullmatch(value) or name in values:
            raise ValueError("a line is malformed")
        values[name] = value
    if values.pop("version", None) != str(VERSION):
        raise ValueError(f"its version is not {VERSION} (written by a newer release?)")
    known = {f.name: f.type for f in fields(DataDirIdentity)}
    unknown = set(values) - set(known)
    if unknown:
        raise ValueError(f"unknown field {min(unknown)}")
    try:
        return DataDirIdentity(**{
            name: int(values[name]) if kind in (int, "int") else values.get(name, "") for name, kind in known.items()
        })
    except (KeyError, ValueError) as exc:
        raise ValueError("a format version is missing or not a number") from exc


# the data directory ---------------------------------------------------------------------
def identity_path(config: Config) -> Path:
    return config.data_dir / IDENTITY_FILE


def read(config: Config) -> DataDirIdentity | None:
    path = identity_path(config)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return decode(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is unusable: {exc}") from None


def write(config: Config, identity: DataDirIdentity) -> None:
    write_atomic(identity_path(config), encode(identity))


def has_keyring(config: Config) -> bool:
    return any((config.keys_dir / name).exists() for name in KEYRING_FILES)


def has_index(config: Config) -> bool:
    return (config.index_dir / "data.mdb").exists()


def compare(recorded: DataDirIdentity, config: Config) -> None:
    """Refuse (``ConfigError``, one line naming the setting) a configuration this data
    directory was not made with, or formats newer than this release reads."""
    wanted = of_config(config)
    for name in COMPARED:
        have, want = getattr(recorded, name), getattr(wanted, name)
        if have != want:
            raise ConfigError(
                f"data directory {config.data_dir} belongs to {name} = {have or '(unset)'}, but the configuration "
                f"says {name} = {want or '(unset)'} (IMAGEVAULT_{name.upper()}); refusing to open it"
            )
    if recorded.blob_format > FORMAT_VERSION or recorded.index_schema > SCHEMA_VERSION:
        raise ConfigError(
            f"data directory {config.data_dir} was written by a newer release (blob format {recorded.blob_format}, "
            f"index schema {recorded.index_schema}); this one reads up to {FORMAT_VERSION} and {SCHEMA_VERSION}"
        )


def detected(config: Config) -> DataDirIdentity:
    """What an identity-less data directory holds, as far as can be seen without the KMS: its
    key store kind (keyring files or none); the rest is taken from the configuration."""
    kms = "local" if has_keyring(config) else "transit"
    guess = of_config(config)
    if kms == config.kms:
        return guess
    return replace(guess, kms=kms, vault_mount="transit" if kms == "transit" else "",
                   vault_key="(unknown)" if kms == "transit" else "")


def check(config: Config) -> DataDirIdentity | None:
    """Before anything is opened: the recorded identity, compared with the configuration; for a
    data directory without one, what it holds compared the same way. None: nothing recorded yet
    (``record`` writes it once the directory has been opened)."""
    recorded = read(config)
    if recorded is not None:
        compare(recorded, config)
        return recorded
    if has_index(config):
        # Only the key store's kind can be seen; a Transit key's name, a bucket or an endpoint
        # cannot, and are recorded as configured.
        compare(detected(config), config)
    return None


def record(config: Config, recorded: DataDirIdentity | None, *, existing: bool) -> None:
    """After a successful open: write the identity when there was none (``existing``: the
    directory held an index before this open, so an older release made it), or when this
    release upgraded a format version (the index schema on open)."""
    current = of_config(config)
    if recorded == current:
        return
    if recorded is None and existing:
        log.warning("data directory %s had no identity file (made by an older release); recorded: %s",
                    config.data_dir, current.describe())
    elif recorded is not None:
        log.info("data directory %s identity: format versions now blob %d, index schema %d",
                 config.data_dir, current.blob_format, current.index_schema)
    write(config, current)
