"""Builds the configured key provider and blob backend (the only place that chooses them)."""

from __future__ import annotations

from vault.config import Config, ConfigError
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
    raise ConfigError(f"storage backend {config.store!r} is not available in this build")
