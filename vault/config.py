"""Configuration: defaults, then a TOML file, then ``IMAGEVAULT_*`` environment variables.

One frozen ``Config`` is built at start-up and passed down; nothing else reads the environment.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from vault.values import parse_bool

DEFAULT_CONTENT_TYPES = (
    "image/jpeg",
    "image/png",
    "image/tiff",
    "image/heic",
    "image/webp",
    "application/dicom",
    "model/obj",
    "model/ply",
)


class ConfigError(Exception):
    """A configuration value is missing or malformed (CLI exits non-zero with the message)."""


@dataclass(frozen=True)
class Config:
    data_dir: Path = Path("./data")
    listen: str = "127.0.0.1:8080"
    # Processes serving the listening socket (``imagevault serve``); 0: one per core
    # (os.cpu_count()). 1: a single process, no parent (vault/api/prefork.py).
    workers: int = 0
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None  # set: clients must present a certificate signed by it (mTLS)
    body_read_timeout: float = 30.0  # seconds a request body may stall before it is abandoned
    # An upload body must average this many bytes/s over every window (0 disables the floor).
    min_upload_rate: float = 8192.0
    upload_rate_window: float = 60.0
    # Seconds an idle keep-alive connection stays open.
    keepalive_timeout: float = 15.0
    # Seconds a connection has to deliver a complete request head (request line and headers),
    # from the moment it opens or, on a kept-alive connection, from the next request's first byte.
    header_timeout: float = 10.0
    # Connections open at once; one more is answered 503 overloaded and closed.
    max_connections: int = 1024
    kms: str = "local"  # local | transit
    keyring_passphrase: str | None = field(default=None, repr=False)
    vault_addr: str | None = None
    vault_token: str | None = field(default=None, repr=False)
    vault_role_id: str | None = None
    vault_secret_id: str | None = field(default=None, repr=False)
    vault_mount: str = "transit"
    vault_key: str = "imagevault-kek"
    vault_ca_cert: str | None = None
    vault_create_key: bool = False
    store: str = "fs"  # fs | s3
    s3_endpoint: str | None = None
    s3_bucket: str = "imagevault"
    s3_region: str = "us-east-1"
    s3_access_key: str | None = None
    s3_secret_key: str | None = field(default=None, repr=False)
    s3_verify_tls: bool = True
    s3_create_bucket: bool = True
    s3_path_style: bool = True  # path-style URLs: what SeaweedFS, MinIO and Ceph expect by default
    s3_connect_timeout: float = 2.0
    s3_read_timeout: float = 10.0
    s3_max_attempts: int = 2  # per request, including the first: a small, bounded retry budget
    max_image_bytes: int = 2 * 1024**3
    max_metadata_bytes: int = 64 * 1024
    strip_metadata: str = "gps"  # gps | all | none
    allowed_content_types: tuple[str, ...] = DEFAULT_CONTENT_TYPES
    max_concurrent_uploads: int = 64
    # lmdb | postgres (vault/index/engine.py); recorded in the data directory's identity
    # (vault/datadir.py). IMAGEVAULT_INDEX is accepted as well.
    index_engine: str = "lmdb"
    # The PostgreSQL index: a libpq connection string or URI, password included, so from the
    # environment or a file (IMAGEVAULT_POSTGRES_DSN_FILE), never the command line.
    postgres_dsn: str | None = field(default=None, repr=False)
    postgres_pool_size: int = 8  # connections each daemon keeps open for reads at most
    postgres_connect_timeout: float = 3.0  # seconds to connect before the index counts as unavailable
    # Resumable (tus) uploads, vault/services/uploads.py: seconds a partial upload lives after
    # its creation or last PATCH; the open uploads, and the sum of their declared lengths, that
    # one tenant may hold at once.
    upload_expiry: float = 86400.0
    max_open_uploads: int = 256
    max_open_upload_bytes: int = 16 * 1024**3
    # Seconds the outcome of a request made with an Idempotency-Key is kept for its retries.
    idempotency_ttl: float = 86400.0
    # Renditions (thumbnails, previews; vault/services/renditions.py): decoder processes at once
    # (0: none run, jobs wait), and one job's bounds.
    rendition_workers: int = 1
    rendition_timeout: float = 30.0  # seconds of decoding per image before its job fails
    rendition_memory: int = 1024 * 1024**2  # address space a decoder process may add, above its libraries
    rendition_max_pixels: int = 89_000_000  # declared width x height above which an image is refused
    rendition_max_bytes: int = 256 * 1024**2  # larger originals get no renditions (too_large)
    lmdb_map_size: int = 1 << 30
    lmdb_max_readers: int = 256
    # Index entries one search call may walk before it answers with a cursor to resume from.
    search_scan_budget: int = 20000
    rewrap_batch: int = 256
    dek_pool: bool = True  # pre-wrap data keys in batches for remote KMSs (vault.keys.pool)
    rewrap_pause: float = 0.0  # seconds between rewrap batches, to cap the load on the KMS
    dek_cache_size: int = 4096
    dek_cache_ttl: float = 300.0
    medical_retention_years: int = 10
    aesthetic_retention_months: int = 24
    # Per-tenant medical retention in years: "clinic-a=15,clinic-b=8", or a TOML table
    # [medical_retention_by_tenant] (vault/retention/policy.py explains when it applies).
    medical_retention_by_tenant: str = ""
    sweep_interval: float = 3600.0
    # Seconds between shred epochs while anything was shredded since the last one; 0: never due
    # on its own (the operator runs `imagevault keys epoch`). See vault/services/keyadmin.py.
    shred_epoch_interval: float = 86400.0
    # Patient-id scheme (vault/index/patient_ids.py): exact | nhs | legacy, for tenants not in
    # the map below; "" leaves it to the data directory's recorded default.
    patient_id_scheme: str = ""
    # Per-tenant schemes: "clinic-a=nhs,clinic-b=exact", or a TOML table [patient_id_scheme_by_tenant].
    patient_id_scheme_by_tenant: str = ""
    # Seconds between readiness probes (index read, store write, KMS call); /readyz reports the
    # last result, so a flood of /readyz requests causes no work of its own.
    readiness_interval: float = 10.0
    audit_witness_interval: float = 300.0  # seconds between audit head log lines; 0 disables
    # OpenID Connect: JWT access tokens from the clinic's identity provider are accepted beside
    # opaque tokens while oidc_issuer is set (vault/identity/oidc.py; docs/config.md).
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_jwks_url: str | None = None  # unset: the jwks_uri of the issuer's discovery document
    oidc_tenant_claim: str = "tenant"
    oidc_role_claim: str = "roles"
    oidc_name_claim: str = "sub"
    # "idp-value=tenant,..." / "idp-value=role,..." (or TOML tables); empty: claim values are
    # imagevault tenant slugs / role names as they are.
    oidc_tenant_map: str = ""
    oidc_role_map: str = ""
    oidc_jwks_cache_ttl: float = 600.0  # seconds a fetched key set is used before it is fetched again
    oidc_jwks_min_refresh: float = 30.0  # at least this long between fetches prompted by an unknown kid
    oidc_fetch_timeout: float = 5.0  # seconds for one discovery or JWKS fetch, all of it
    oidc_leeway: float = 30.0  # seconds of clock skew allowed on exp, nbf and iat
    # The web console's sessions (vault/api/sessions.py): seconds without a request before a
    # session ends, and seconds after sign-in after which it ends whatever its use.
    console_idle_timeout: float = 900.0
    console_session_lifetime: float = 43200.0
    console_max_sessions: int = 10000
    # The console's client id at the identity provider (oidc_issuer): set, the console offers
    # sign-in there (authorization code with PKCE, a public client); unset, tokens are pasted.
    console_oidc_client_id: str | None = None
    log_level: str = "INFO"
    log_format: str = "text"  # text | json (one object per line, for a SIEM; vault/logs.py)

    def with_overrides(self, **values: Any) -> Config:
        return replace(self, **values)

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "index"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def blobs_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def audit_dir(self) -> Path:
        return self.data_dir / "audit"

    @property
    def run_dir(self) -> Path:
        """What lives only while a daemon runs: job locks, the workers' metric files."""
        return self.data_dir / "run"

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"


# S3 bucket naming rules: 3..63 characters, lower-case letters, digits, dots and hyphens,
# starting and ending with a letter or digit.
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")

# Settings that a TOML file may give as a table of key = value (a tenant, an IdP claim value).
_TENANT_TABLES = ("medical_retention_by_tenant", "patient_id_scheme_by_tenant", "oidc_tenant_map", "oidc_role_map")

# Settings (docs/config.md) whose fallback is an unprefixed Vault variable.
_FALLBACKS = {"vault_addr": "VAULT_ADDR", "vault_token": "VAULT_TOKEN", "index_engine": "IMAGEVAULT_INDEX"}

# Credentials. Each may instead be read from a file (``IMAGEVAULT_<NAME>_FILE``, TOML
# ``<name>_file``) so that a service manager can pass it as a credential file rather than in the
# environment, which other processes of the same user, crash reports and `systemctl show` can read.
SECRET_SETTINGS = ("keyring_passphrase", "vault_token", "vault_secret_id", "s3_secret_key", "postgres_dsn")


def _coerce(name: str, kind: Any, raw: Any) -> Any:
    try:
        if kind in (bool, "bool"):
            return raw if isinstance(raw, bool) else parse_bool(str(raw))
        if kind in (int, "int"):
            return int(raw)
        if kind in (float, "float"):
            return float(raw)
        if kind in (Path, "Path"):
            return Path(raw)
        if isinstance(raw, dict) and name in _TENANT_TABLES:
            return ",".join(f"{k}={v}" for k, v in raw.items())
        if kind in ("tuple[str, ...]",):
            if isinstance(raw, str):
                return tuple(p.strip() for p in raw.split(",") if p.strip())
            return tuple(str(p) for p in raw)
        return None if raw is None else str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"configuration value {name} is malformed") from exc


def _validate(config: Config) -> Config:
    if config.kms not in ("local", "transit"):
        raise ConfigError("kms must be 'local' or 'transit'")
    if config.store not in ("fs", "s3"):
        raise ConfigError("store must be 'fs' or 's3'")
    if config.index_engine not in ("lmdb", "postgres"):
        raise ConfigError("index_engine must be 'lmdb' or 'postgres'")
    if config.index_engine == "postgres" and not config.postgres_dsn:
        raise ConfigError("index_engine = postgres needs IMAGEVAULT_POSTGRES_DSN (or IMAGEVAULT_POSTGRES_DSN_FILE)")
    if config.postgres_pool_size < 1 or config.postgres_connect_timeout <= 0:
        raise ConfigError("postgres_pool_size must be 1 or more, postgres_connect_timeout positive")
    if config.strip_metadata not in ("gps", "all", "none"):
        raise ConfigError("strip_metadata must be 'gps', 'all' or 'none'")
    if config.log_format not in ("text", "json"):
        raise ConfigError("log_format must be 'text' or 'json'")
    if config.store == "s3":
        if not _BUCKET_RE.fullmatch(config.s3_bucket):
            raise ConfigError("s3_bucket is not a valid bucket name")
        if config.s3_endpoint is not None and not config.s3_endpoint.startswith(("http://", "https://")):
            raise ConfigError("s3_endpoint must be an http:// or https:// URL")
        if config.s3_connect_timeout <= 0 or config.s3_read_timeout <= 0 or config.s3_max_attempts < 1:
            raise ConfigError("s3 timeouts and s3_max_attempts must be positive")
    host, sep, port = config.listen.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError("listen must be HOST:PORT")
    if bool(config.tls_cert) != bool(config.tls_key):
        raise ConfigError("tls_cert and tls_key must be given together")
    if config.tls_client_ca and not config.tls_cert:
        raise ConfigError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
    if config.rendition_workers < 0 or config.rendition_timeout <= 0 or config.rendition_memory < 64 * 1024**2:
        raise ConfigError("rendition_workers must be >= 0, rendition_timeout positive, rendition_memory >= 64 MiB")
    if config.rendition_max_pixels <= 0 or config.rendition_max_bytes <= 0:
        raise ConfigError("rendition_max_pixels and rendition_max_bytes must be positive")
    if config.max_image_bytes <= 0 or config.max_concurrent_uploads <= 0:
        raise ConfigError("limits must be positive")
    if config.min_upload_rate < 0 or config.upload_rate_window <= 0 or config.keepalive_timeout <= 0:
        raise ConfigError("min_upload_rate must be 0 or more; upload_rate_window and keepalive_timeout positive")
    if config.header_timeout <= 0 or config.max_connections <= 0:
        raise ConfigError("header_timeout and max_connections must be positive")
    if config.upload_expiry <= 0 or config.max_open_uploads <= 0 or config.max_open_upload_bytes <= 0:
        raise ConfigError("upload_expiry, max_open_uploads and max_open_upload_bytes must be positive")
    if config.workers < 0:
        raise ConfigError("workers must be 0 (one per core) or a positive number of processes")
    if config.search_scan_budget < 1:
        raise ConfigError("search_scan_budget must be a positive number of index entries")
    if config.readiness_interval <= 0:
        raise ConfigError("readiness_interval must be a positive number of seconds")
    if not 0 < config.console_idle_timeout <= config.console_session_lifetime:
        raise ConfigError("console_idle_timeout must be positive and at most console_session_lifetime")
    if config.console_max_sessions < 1:
        raise ConfigError("console_max_sessions must be at least 1")
    if config.console_oidc_client_id is not None and config.oidc_issuer is None:
        raise ConfigError("console_oidc_client_id needs oidc_issuer (the identity provider to sign in at)")
    if config.idempotency_ttl <= 0:
        raise ConfigError("idempotency_ttl must be a positive number of seconds")
    if config.sweep_interval < 0:
        raise ConfigError("sweep_interval must be 0 (disabled) or a number of seconds")
    from vault.retention.policy import parse_tenant_years

    try:
        parse_tenant_years(config.medical_retention_by_tenant)
    except ValueError as exc:
        raise ConfigError(f"medical_retention_by_tenant is malformed: {exc}") from exc
    from vault.index.patient_ids import parse_scheme, parse_tenant_schemes

    if config.patient_id_scheme:
        try:
            parse_scheme(config.patient_id_scheme)
        except ValueError as exc:
            raise ConfigError("patient_id_scheme must be 'exact', 'nhs' or 'legacy' (or empty)") from exc
    try:
        parse_tenant_schemes(config.patient_id_scheme_by_tenant)
    except ValueError as exc:
        raise ConfigError(f"patient_id_scheme_by_tenant is malformed: {exc}") from exc
    _validate_oidc(config)
    return config


def _validate_oidc(config: Config) -> None:
    from vault.identity.claims import ClaimMapping
    from vault.identity.jwks import fetchable_url

    if config.oidc_issuer is None:
        return
    if not fetchable_url(config.oidc_issuer):
        raise ConfigError("oidc_issuer must be an https:// URL (http:// only on a loopback address)")
    if config.oidc_jwks_url is not None and not fetchable_url(config.oidc_jwks_url):
        raise ConfigError("oidc_jwks_url must be an https:// URL (http:// only on a loopback address)")
    if not config.oidc_audience:
        raise ConfigError("oidc_audience is required with oidc_issuer (tokens for other services must not be accepted)")
    if not (config.oidc_tenant_claim and config.oidc_role_claim and config.oidc_name_claim):
        raise ConfigError("oidc_tenant_claim, oidc_role_claim and oidc_name_claim must not be empty")
    if config.oidc_jwks_cache_ttl <= 0 or config.oidc_fetch_timeout <= 0 or config.oidc_jwks_min_refresh < 0:
        raise ConfigError("oidc_jwks_cache_ttl and oidc_fetch_timeout must be positive, oidc_jwks_min_refresh 0 or more")
    if not 0 <= config.oidc_leeway <= 300:
        raise ConfigError("oidc_leeway must be between 0 and 300 seconds")
    try:
        ClaimMapping.from_config(config)
    except ValueError as exc:
        raise ConfigError(f"oidc claim maps are malformed: {exc}") from exc


def _read_secret_file(source: str, path: str) -> str:
    """The file's text without one trailing newline (what ``echo`` and editors add)."""
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc.__class__.__name__
        raise ConfigError(f"cannot read {path} ({source}): {reason}") from None
    for ending in ("\r\n", "\n"):
        if text.endswith(ending):
            return text[: -len(ending)]
    return text


def _secret_files(table: dict[str, Any], env: dict[str, str], path: Any) -> dict[str, tuple[str, str]]:
    """Secrets given as files, by setting: (what named the file, its path). ``<name>_file`` keys
    are taken out of the TOML table; an environment variable, either form, wins over the file as
    for every setting."""
    files: dict[str, tuple[str, str]] = {}
    for name in SECRET_SETTINGS:
        key = f"{name}_file"
        if key in table:
            if name in table:
                raise ConfigError(f"{name} and {key} are both set in {path}; set one")
            raw = table.pop(key)
            if not isinstance(raw, str):
                raise ConfigError(f"configuration value {key} is malformed")
            files[name] = (key, raw)
        variable = f"IMAGEVAULT_{name.upper()}"
        if f"{variable}_FILE" in env:
            if variable in env:
                raise ConfigError(f"{variable} and {variable}_FILE are both set; set one")
            files[name] = (f"{variable}_FILE", env[f"{variable}_FILE"])
        elif variable in env:
            files.pop(name, None)
    return files


def load_config(
    data_dir: str | os.PathLike[str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    environ: dict[str, str] | None = None,
    **overrides: Any,
) -> Config:
    """Build the Config: defaults < TOML file < environment < explicit overrides (CLI flags)."""
    env = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    kinds = {f.name: f.type for f in fields(Config)}
    path = config_file or env.get("IMAGEVAULT_CONFIG")
    table: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as handle:
                table = tomllib.load(handle)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.__class__.__name__}") from exc
    secret_files = _secret_files(table, env, path)
    if table:
        for key, raw in table.items():
            if key not in kinds:
                raise ConfigError(f"unknown configuration key {key!r} in {path}")
            values[key] = _coerce(key, kinds[key], raw)
    for name, kind in kinds.items():
        raw = env.get(f"IMAGEVAULT_{name.upper()}")
        if name in secret_files:
            values[name] = _read_secret_file(*secret_files[name])
            continue  # a file also wins over the VAULT_TOKEN fallback
        if raw is None and name in _FALLBACKS:
            raw = env.get(_FALLBACKS[name])
        if raw is not None:
            values[name] = _coerce(name, kind, raw)
    if data_dir is not None:
        values["data_dir"] = Path(data_dir)
    for key, raw in overrides.items():
        if raw is not None:
            values[key] = _coerce(key, kinds[key], raw)
    return _validate(Config(**values))
