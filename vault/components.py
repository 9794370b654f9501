"""Builds the configured key provider, blob backend, index engine and audit trail (the only
place that chooses them)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from vault.audit.store import AUDIT_DBS, AuditLog
from vault.config import Config, ConfigError
from vault.index.engine import IndexEngine
from vault.keys.base import KeyProvider
from vault.store.backends.base import BlobBackend


async def open_key_provider(config: Config, *, create: bool = False) -> KeyProvider:
    if config.kms == "local":
        from vault.keys.keyring import LocalKeyring

        if create:
            return LocalKeyring.create(config.keys_dir, passphrase=config.keyring_passphrase)
        return LocalKeyring.open(config.keys_dir, passphrase=config.keyring_passphrase)
    if config.kms == "transit":
        from vault.keys.transit import TransitConfig, TransitKeyProvider

        if not config.vault_addr:
            raise ConfigError("kms = transit needs IMAGEVAULT_VAULT_ADDR (or VAULT_ADDR)")
        if not config.vault_token and not (config.vault_role_id and config.vault_secret_id):
            raise ConfigError("kms = transit needs IMAGEVAULT_VAULT_TOKEN (or VAULT_TOKEN), or "
                              "IMAGEVAULT_VAULT_ROLE_ID with IMAGEVAULT_VAULT_SECRET_ID")
        provider = TransitKeyProvider(
            TransitConfig(
                addr=config.vault_addr,
                token=config.vault_token,
                role_id=config.vault_role_id,
                secret_id=config.vault_secret_id,
                mount=config.vault_mount,
                key_name=config.vault_key,
                ca_cert=config.vault_ca_cert,
                create_key=config.vault_create_key or create,
            )
        )
        await provider.check()
        return provider
    raise ConfigError(f"unknown kms {config.kms!r}")


async def open_backend(config: Config, *, create: bool = False) -> BlobBackend:
    if config.store == "fs":
        from vault.store.backends.fs import FsBackend

        return FsBackend(config.blobs_dir)
    if config.store == "s3":
        from vault.store.backends.s3 import S3Backend, S3Settings, part_size_for

        settings = S3Settings(
            bucket=config.s3_bucket,
            endpoint=config.s3_endpoint,
            region=config.s3_region,
            access_key=config.s3_access_key,
            secret_key=config.s3_secret_key,
            verify_tls=config.s3_verify_tls,
            path_style=config.s3_path_style,
            connect_timeout=config.s3_connect_timeout,
            read_timeout=config.s3_read_timeout,
            max_attempts=config.s3_max_attempts,
            # Every concurrent upload and download may hold a connection; botocore's default
            # pool of 10 would queue them behind each other.
            max_connections=max(16, config.max_concurrent_uploads),
            part_size=part_size_for(config.max_image_bytes),
        )
        # The bucket is created by `imagevault init` (create=True) when s3_create_bucket allows.
        return await S3Backend.open(settings, create_bucket=create and config.s3_create_bucket)
    raise ConfigError(f"storage backend {config.store!r} is not available in this build")


def open_index(
    config: Config, *, on_commit: Callable[[float, int], None] | None = None, create: bool = False,
    readonly: bool = False,
) -> IndexEngine:
    """The configured index engine. ``create``: a PostgreSQL database without a schema gets the
    migrations (``imagevault init``); one with an older schema is left for ``imagevault index
    upgrade``, an explicit step."""
    if config.index_engine == "lmdb":
        from vault.index.lmdb import Index

        return Index(config.index_dir, map_size=config.lmdb_map_size, on_commit=on_commit,
                     max_readers=config.lmdb_max_readers, readonly=readonly)
    if config.index_engine == "postgres":
        from vault.index import postgres

        dsn = _postgres_dsn(config)
        if create and postgres.database_version(dsn, timeout=config.postgres_connect_timeout) == 0:
            postgres.migrate(dsn, timeout=config.postgres_connect_timeout)
        return postgres.PgIndex(dsn, pool_size=config.postgres_pool_size, connect_timeout=config.postgres_connect_timeout,
                                on_commit=on_commit, readonly=readonly)
    raise ConfigError(f"unknown index engine {config.index_engine!r}")


def open_audit(config: Config, clock: Callable[[], datetime], *, readonly: bool = False) -> AuditLog:
    """The audit trail on the configured engine: its own LMDB environment, or its own table."""
    if config.index_engine == "postgres":
        from vault.index import postgres

        index = postgres.PgIndex(
            _postgres_dsn(config), table=postgres.AUDIT_TABLE, databases=AUDIT_DBS, serialise=False,
            pool_size=config.postgres_pool_size, connect_timeout=config.postgres_connect_timeout, readonly=readonly,
        )
        return AuditLog(config.audit_dir, clock, index=index)
    return AuditLog(config.audit_dir, clock, map_size=config.lmdb_map_size, readonly=readonly)


def _postgres_dsn(config: Config) -> str:
    if not config.postgres_dsn:
        raise ConfigError("index_engine = postgres needs IMAGEVAULT_POSTGRES_DSN (or IMAGEVAULT_POSTGRES_DSN_FILE)")
    return config.postgres_dsn
