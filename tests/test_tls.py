"""HTTPS with TLS 1.2+ only and optional client certificates, against a throwaway CA."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.test_daemon import Daemon, cli


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _issue(subject: str, issuer_key, issuer_name, *, ca: bool, server: bool = False, client: bool = False):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name or _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    if client:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    return key, cert


def _write(path: Path, key, cert) -> tuple[Path, Path]:
    cert_path, key_path = path.with_suffix(".crt"), path.with_suffix(".key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def pki(tmp_path):
    ca_key, ca_cert = _issue("imagevault test CA", None, None, ca=True)
    server_key, server_cert = _issue("localhost", ca_key, ca_cert.subject, ca=False, server=True)
    client_key, client_cert = _issue("capture-app", ca_key, ca_cert.subject, ca=False, client=True)
    ca_path, _ = _write(tmp_path / "ca", ca_key, ca_cert)
    server = _write(tmp_path / "server", server_key, server_cert)
    client = _write(tmp_path / "client", client_key, client_cert)
    return {"ca": ca_path, "server": server, "client": client}


def _start(tmp_path, pki, *, mtls: bool, workers: int = 1) -> Daemon:
    data_dir = tmp_path / "data"
    cli(data_dir, "init")
    env = {"IMAGEVAULT_TLS_CERT": str(pki["server"][0]), "IMAGEVAULT_TLS_KEY": str(pki["server"][1])}
    if mtls:
        env["IMAGEVAULT_TLS_CLIENT_CA"] = str(pki["ca"])
    daemon = Daemon(data_dir, tmp_path / "daemon.log", env=env, workers=workers)
    daemon.url = daemon.url.replace("http://", "https://")
    return daemon


def _client_context(pki, *, with_cert: bool, maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    if with_cert:
        context.load_cert_chain(*map(str, pki["client"]))
    if maximum is not None:
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = maximum
    return context


async def _get(url: str, context: ssl.SSLContext) -> int:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        async with session.get(f"{url}/healthz") as response:
            return response.status


async def test_https_serves_and_refuses_plain_http_and_old_tls(tmp_path, pki):
    daemon = _start(tmp_path, pki, mtls=False)
    try:
        assert await _get(daemon.url, _client_context(pki, with_cert=False)) == 200
        with pytest.raises(aiohttp.ClientError):
            async with aiohttp.ClientSession() as session:
                await session.get(daemon.url.replace("https://", "http://") + "/healthz")
        try:
            old = _client_context(pki, with_cert=False, maximum=ssl.TLSVersion.TLSv1_1)
        except (ValueError, ssl.SSLError):
            old = None  # this OpenSSL refuses to even configure TLS 1.1: nothing to test
        if old is not None:
            with pytest.raises(aiohttp.ClientError):
                await _get(daemon.url, old)
    finally:
        assert daemon.stop() == 0


async def test_mutual_tls_requires_a_client_certificate_from_the_configured_ca(tmp_path, pki):
    daemon = _start(tmp_path, pki, mtls=True)
    try:
        assert await _get(daemon.url, _client_context(pki, with_cert=True)) == 200
        with pytest.raises(aiohttp.ClientError):
            await _get(daemon.url, _client_context(pki, with_cert=False))
        # A certificate from another CA is refused too.
        other_key, other_ca = _issue("other CA", None, None, ca=True)
        stranger_key, stranger = _issue("stranger", other_key, other_ca.subject, ca=False, client=True)
        cert, key = _write(tmp_path / "stranger", stranger_key, stranger)
        context = ssl.create_default_context(cafile=str(pki["ca"]))
        context.load_cert_chain(str(cert), str(key))
        with pytest.raises(aiohttp.ClientError):
            await _get(daemon.url, context)
    finally:
        assert daemon.stop() == 0


def test_half_configured_tls_is_a_clear_error(tmp_path, pki):
    data_dir = tmp_path / "data"
    cli(data_dir, "init")
    result = cli(data_dir, "serve", "--tls-cert", str(pki["server"][0]), check=False)
    assert result.returncode != 0 and "tls_key" in result.stderr


async def test_mutual_tls_holds_on_every_worker(tmp_path, pki):
    daemon = _start(tmp_path, pki, mtls=True, workers=2)
    try:
        with_cert = aiohttp.TCPConnector(ssl=_client_context(pki, with_cert=True), force_close=True)
        async with aiohttp.ClientSession(connector=with_cert) as session:
            for _ in range(8):  # fresh connections: both workers answer some
                async with session.get(f"{daemon.url}/healthz") as response:
                    assert response.status == 200
        for _ in range(4):
            without = aiohttp.TCPConnector(ssl=_client_context(pki, with_cert=False), force_close=True)
            async with aiohttp.ClientSession(connector=without) as session:
                with pytest.raises(aiohttp.ClientError):
                    async with session.get(f"{daemon.url}/healthz") as response:
                        await response.read()
    finally:
        assert daemon.stop() == 0
