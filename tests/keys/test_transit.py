"""The Transit key provider against a real OpenBao dev server (no mocks of the KMS)."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import hvac.exceptions
import pytest

from vault.errors import InvalidRequest, KeyMaterialError, KmsUnavailable
from vault.keys.base import key_version_of
from vault.keys.transit import TransitConfig, TransitKeyProvider

REPO = Path(__file__).resolve().parents[2]
DAEMON_POLICY = (REPO / "deploy" / "vault-policy.hcl").read_text()
OPERATOR_POLICY = (REPO / "deploy" / "vault-operator-policy.hcl").read_text()


def dek() -> bytes:
    return secrets.token_bytes(32)


@pytest.fixture
async def make_provider():
    providers: list[TransitKeyProvider] = []

    def make(server, key_name: str, **overrides) -> TransitKeyProvider:
        options = {"addr": server.addr, "token": server.root_token, "key_name": key_name}
        options.update(overrides)
        provider = TransitKeyProvider(TransitConfig(**options))
        providers.append(provider)
        return provider

    yield make
    for provider in providers:
        await provider.close()


@pytest.fixture
def provider(openbao, transit_key, make_provider) -> TransitKeyProvider:
    return make_provider(openbao, transit_key)


# -- wrapping ----------------------------------------------------------------------------------


async def test_round_trip_through_transit(provider):
    await provider.check()
    deks = [dek() for _ in range(10)]
    wrapped = await provider.wrap_data_keys(deks)
    assert await provider.unwrap_data_keys(wrapped) == deks
    assert await provider.unwrap_data_key(await provider.wrap_data_key(deks[0])) == deks[0]


async def test_wrapped_keys_start_with_vault_v1(provider):
    wrapped = await provider.wrap_data_key(dek())
    assert wrapped.startswith("vault:v1:")
    assert key_version_of(wrapped) == 1


async def test_64_concurrent_single_wraps_become_few_transit_calls(provider):
    deks = [dek() for _ in range(64)]
    wrapped = await asyncio.gather(*(provider.wrap_data_key(d) for d in deks))
    assert 1 <= provider.calls["encrypt"] <= 4
    assert provider.batch_stats["wrap"]["items"] == 64
    unwrapped = await asyncio.gather(*(provider.unwrap_data_key(w) for w in wrapped))
    assert list(unwrapped) == deks
    assert 1 <= provider.calls["decrypt"] <= 4


async def test_large_batches_are_split_at_batch_size(openbao, transit_key, make_provider):
    provider = make_provider(openbao, transit_key, batch_size=100)
    wrapped = await provider.wrap_data_keys([dek() for _ in range(250)])
    assert len(wrapped) == 250
    assert provider.calls["encrypt"] == 3
    assert provider.batch_stats["wrap"]["largest_batch"] == 100


async def test_one_garbage_ciphertext_fails_only_its_item(provider):
    deks = [dek(), dek()]
    good = await provider.wrap_data_keys(deks)
    body = good[0].split(":", 2)[2]
    flipped = ("B" if body[0] == "A" else "A") + body[1:]
    batch = [
        good[0],
        "vault:v1:" + flipped,  # tampered: fails authentication
        "vault:v1:garbage",  # not a ciphertext
        "vault:v9:" + body,  # a version that does not exist
        "local:v1:AAAA",  # another provider's key: never sent to Transit
        "nonsense",
        good[1],
    ]
    results = await provider.unwrap_data_keys(batch)
    assert results[0] == deks[0] and results[-1] == deks[1]
    assert all(isinstance(r, KeyMaterialError) for r in results[1:-1])
    assert provider.calls["decrypt"] == 1
    assert provider.errors["item_error"] == 3

    rewrapped = await provider.rewrap_data_keys(batch)
    assert isinstance(rewrapped[0], str) and isinstance(rewrapped[-1], str)
    assert all(isinstance(r, KeyMaterialError) for r in rewrapped[1:-1])


async def test_single_unwrap_of_garbage_raises_key_material_error(provider):
    with pytest.raises(KeyMaterialError):
        await provider.unwrap_data_key("vault:v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")


async def test_wrap_rejects_a_dek_of_the_wrong_length(provider):
    with pytest.raises(ValueError, match="32 bytes"):
        await provider.wrap_data_keys([b"short"])
    assert provider.calls["encrypt"] == 0


# -- rotation and retirement ---------------------------------------------------------------------


async def test_rotate_then_wraps_use_v2_and_rewrap_moves_v1_to_v2(provider):
    old_deks = [dek(), dek()]
    old = await provider.wrap_data_keys(old_deks)
    assert await provider.rotate() == 2
    assert (await provider.wrap_data_key(dek())).startswith("vault:v2:")
    rewrapped = await provider.rewrap_data_keys(old)
    assert [key_version_of(w) for w in rewrapped] == [2, 2]
    assert await provider.unwrap_data_keys(rewrapped) == old_deks
    assert await provider.unwrap_data_keys(old) == old_deks  # v1 still usable before retire
    status = await provider.status()
    assert (status.current_version, status.min_decryption_version) == (2, 1)
    assert status.versions == (1, 2)


async def test_retire_destroys_v1_but_rewrapped_keys_still_work(openbao, transit_key, provider):
    saved_dek, moved_dek = dek(), dek()
    saved_v1 = await provider.wrap_data_key(saved_dek)  # e.g. a stale copy in an old backup
    moved_v1 = await provider.wrap_data_key(moved_dek)
    await provider.rotate()
    [moved_v2] = await provider.rewrap_data_keys([moved_v1])

    await provider.retire(below=2)

    [result] = await provider.unwrap_data_keys([saved_v1])
    assert isinstance(result, KeyMaterialError)
    assert await provider.unwrap_data_key(moved_v2) == moved_dek
    assert isinstance((await provider.rewrap_data_keys([saved_v1]))[0], KeyMaterialError)
    status = await provider.status()
    assert (status.current_version, status.min_decryption_version, status.versions) == (2, 2, (2,))
    assert status.details["min_available_version"] == "2"

    # Trimmed, not merely hidden: even root cannot bring version 1 back.
    root = openbao.client()
    with pytest.raises(hvac.exceptions.InvalidRequest):
        root.secrets.transit.update_key_configuration(transit_key, min_decryption_version=1)
    # New wraps still use the latest version after min_encryption_version was raised.
    await provider.rotate()
    assert (await provider.wrap_data_key(dek())).startswith("vault:v3:")


async def test_retire_is_idempotent(provider):
    await provider.rotate()
    await provider.retire(below=2)
    calls = provider.calls.copy()
    await provider.retire(below=2)
    await provider.retire(below=1)
    assert provider.calls["config"] == calls["config"]
    assert provider.calls["trim"] == calls["trim"]


async def test_retire_refuses_the_current_version(provider):
    await provider.rotate()
    with pytest.raises(InvalidRequest, match="current key version 2"):
        await provider.retire(below=3)
    assert (await provider.status()).versions == (1, 2)


# -- start-up check and errors that name the problem ----------------------------------------


async def test_check_names_a_missing_key_and_its_mount(openbao, make_provider):
    provider = make_provider(openbao, "no-such-key")
    message = "transit key 'no-such-key' not found at mount 'transit'"
    with pytest.raises(KmsUnavailable, match=message):
        await provider.check()
    with pytest.raises(hvac.exceptions.InvalidPath):
        openbao.client().secrets.transit.read_key("no-such-key")


async def test_check_names_a_missing_mount(openbao, transit_key, make_provider):
    provider = make_provider(openbao, transit_key, mount="not-transit")
    with pytest.raises(KmsUnavailable, match="no transit engine mounted at 'not-transit'"):
        await provider.check()


async def test_check_creates_a_missing_key_when_allowed(openbao, make_provider):
    name = "created-" + secrets.token_hex(4)
    provider = make_provider(openbao, name, create_key=True)
    await provider.check()
    info = openbao.client().secrets.transit.read_key(name)["data"]
    assert info["type"] == "aes256-gcm96"
    assert info["exportable"] is False and info["allow_plaintext_backup"] is False
    assert provider.calls["create_key"] == 1
    await provider.check()  # second time: exists, not recreated
    assert provider.calls["create_key"] == 1


async def test_check_refuses_a_key_that_cannot_wrap(openbao, make_provider):
    name = "signing-" + secrets.token_hex(4)
    openbao.client().secrets.transit.create_key(name, key_type="ed25519")
    provider = make_provider(openbao, name)
    with pytest.raises(KmsUnavailable, match="cannot wrap data keys"):
        await provider.check()


async def test_wrong_token_gives_a_clear_error_and_is_not_retried(
    openbao, transit_key, make_provider
):
    provider = make_provider(openbao, transit_key, token="not-a-real-token")
    with pytest.raises(KmsUnavailable, match="token was rejected") as excinfo:
        await provider.check()
    assert "not-a-real-token" not in str(excinfo.value)
    with pytest.raises(KmsUnavailable, match="permission denied by KMS"):
        await provider.wrap_data_key(dek())
    assert provider.calls["encrypt"] == 1
    assert provider.errors["forbidden"] >= 2


async def test_unreachable_kms_fails_fast_with_kms_unavailable(make_provider):
    class Nowhere:
        addr = "http://127.0.0.1:9"  # discard port: nothing listens, connection refused
        root_token = "irrelevant"

    provider = make_provider(Nowhere, "any", max_retries=3)
    started = time.monotonic()
    with pytest.raises(KmsUnavailable, match="unreachable"):
        await provider.wrap_data_key(dek())
    assert time.monotonic() - started < 3
    assert provider.calls["encrypt"] == 4  # first try + 3 retries
    assert provider.errors["connection"] == 4


# -- outages: the same provider object recovers ----------------------------------------------------


async def test_paused_server_fails_within_timeouts_then_recovers(private_openbao, make_provider):
    server = private_openbao
    server.create_key("kek")
    provider = make_provider(server, "kek", connect_timeout=1.0, read_timeout=2.0)
    wrapped = await provider.wrap_data_key(b"d" * 32)

    server.pause()
    try:
        started = time.monotonic()
        with pytest.raises(KmsUnavailable, match="did not answer in time"):
            await provider.unwrap_data_key(wrapped)
        elapsed = time.monotonic() - started
        assert 2.0 <= elapsed < 10.0
        assert provider.errors["timeout"] >= 1
        assert (await provider.unwrap_data_keys([])) == []
    finally:
        server.resume()

    assert await provider.unwrap_data_key(wrapped) == b"d" * 32
    assert (await provider.wrap_data_key(dek())).startswith("vault:v1:")


async def test_provider_recovers_after_the_server_restarts(private_openbao, make_provider):
    server = private_openbao
    server.create_key("kek")
    provider = make_provider(server, "kek")
    await provider.check()
    await provider.wrap_data_key(dek())

    server.stop()
    started = time.monotonic()
    with pytest.raises(KmsUnavailable, match="unreachable"):
        await provider.wrap_data_key(dek())
    assert time.monotonic() - started < 5
    with pytest.raises(KmsUnavailable):
        await provider.check()

    server.start()  # dev mode lost everything: transit is re-enabled, the key re-created
    server.create_key("kek")
    await provider.check()
    fresh = dek()
    assert await provider.unwrap_data_key(await provider.wrap_data_key(fresh)) == fresh


async def test_sealed_server_gives_kms_unavailable_then_recovers(private_openbao, make_provider):
    server = private_openbao
    server.create_key("kek")
    provider = make_provider(server, "kek")
    server.unseal_key()  # read it while the log is fresh
    server.seal()
    try:
        with pytest.raises(KmsUnavailable, match="sealed"):
            await provider.wrap_data_key(dek())
        assert provider.errors["sealed"] >= 1
    finally:
        server.unseal()
    for _ in range(50):  # the mount table is reloaded a moment after unsealing
        try:
            await provider.check()
            break
        except KmsUnavailable:
            await asyncio.sleep(0.1)
    fresh = dek()
    assert await provider.unwrap_data_key(await provider.wrap_data_key(fresh)) == fresh


# -- the shipped policies ------------------------------------------------------------------


def ensure_key(server, name: str) -> None:
    try:
        server.client().secrets.transit.read_key(name)
    except hvac.exceptions.InvalidPath:
        server.create_key(name)


def token_with(server, *policies: str) -> str:
    root = server.client()
    root.sys.create_or_update_policy("imagevault", DAEMON_POLICY)
    root.sys.create_or_update_policy("imagevault-operator", OPERATOR_POLICY)
    return root.auth.token.create(policies=list(policies), ttl="10m")["auth"]["client_token"]


async def test_daemon_policy_allows_wrapping_and_denies_everything_else(openbao, make_provider):
    ensure_key(openbao, "imagevault-kek")
    token = token_with(openbao, "imagevault")

    provider = make_provider(openbao, "imagevault-kek", token=token)
    await provider.check()
    await provider.status()
    deks = [dek(), dek()]
    wrapped = await provider.wrap_data_keys(deks)
    assert await provider.unwrap_data_keys(wrapped) == deks
    assert all(isinstance(w, str) for w in await provider.rewrap_data_keys(wrapped))
    with pytest.raises(KmsUnavailable, match="permission denied by KMS for rotate"):
        await provider.rotate()
    openbao.client().secrets.transit.rotate_key("imagevault-kek")  # root may; the daemon may not
    latest = (await provider.status()).current_version
    with pytest.raises(KmsUnavailable, match="permission denied by KMS for config"):
        await provider.retire(below=latest)

    # A mistyped key name: refused (403, not retried) and NOT silently created.
    typo = make_provider(openbao, "imagevault-kek-typo", token=token)
    with pytest.raises(KmsUnavailable, match="permission denied by KMS for encrypt"):
        await typo.wrap_data_key(dek())
    assert typo.calls["encrypt"] == 1
    with pytest.raises(KmsUnavailable, match="may not read transit key 'imagevault-kek-typo'"):
        await typo.check()
    with pytest.raises(hvac.exceptions.InvalidPath):
        openbao.client().secrets.transit.read_key("imagevault-kek-typo")

    # Even with create_key=True the daemon policy cannot create a key.
    creator = make_provider(openbao, "imagevault-kek-typo", token=token, create_key=True)
    with pytest.raises(KmsUnavailable, match="permission denied"):
        await creator.check()
    with pytest.raises(hvac.exceptions.InvalidPath):
        openbao.client().secrets.transit.read_key("imagevault-kek-typo")


async def test_operator_policy_can_create_rotate_and_retire(private_openbao, make_provider):
    server = private_openbao
    token = token_with(server, "imagevault", "imagevault-operator")
    provider = make_provider(server, "imagevault-kek", token=token, create_key=True)
    await provider.check()  # creates the key
    old = await provider.wrap_data_key(dek())
    assert await provider.rotate() == 2
    [moved] = await provider.rewrap_data_keys([old])
    await provider.retire(below=2)
    assert isinstance((await provider.unwrap_data_keys([old]))[0], KeyMaterialError)
    assert len(await provider.unwrap_data_key(moved)) == 32
    assert (await provider.status()).versions == (2,)


async def test_approle_login_round_trip(openbao, transit_key, make_provider):
    root = openbao.client()
    if "approle/" not in root.sys.list_auth_methods()["data"]:
        root.sys.enable_auth_method("approle")
    policy = (
        f'path "transit/encrypt/{transit_key}" {{ capabilities = ["update"] }}\n'
        f'path "transit/decrypt/{transit_key}" {{ capabilities = ["update"] }}\n'
        f'path "transit/keys/{transit_key}" {{ capabilities = ["read"] }}\n'
    )
    root.sys.create_or_update_policy(f"p-{transit_key}", policy)
    root.auth.approle.create_or_update_approle(transit_key, token_policies=[f"p-{transit_key}"])
    role_id = root.auth.approle.read_role_id(transit_key)["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id(transit_key)["data"]["secret_id"]

    provider = make_provider(openbao, transit_key, token=None, role_id=role_id, secret_id=secret_id)
    await provider.check()
    fresh = dek()
    assert await provider.unwrap_data_key(await provider.wrap_data_key(fresh)) == fresh
    assert provider.calls["login"] == 1
    assert secret_id not in repr(provider.config)

    wrong = make_provider(openbao, transit_key, token=None, role_id=role_id, secret_id="wrong")
    with pytest.raises(KmsUnavailable, match="AppRole credentials"):
        await wrong.check()


async def test_closed_provider_refuses_calls(provider):
    await provider.close()
    with pytest.raises(KmsUnavailable, match="closed"):
        await provider.wrap_data_key(dek())


def test_config_keeps_the_token_out_of_repr():
    config = TransitConfig(addr="http://127.0.0.1:8200", token="s.secret-token")
    assert "secret-token" not in repr(config)
    with pytest.raises(ValueError):
        TransitConfig(addr="http://127.0.0.1:8200")  # no credentials
    with pytest.raises(ValueError, match="both role_id and secret_id"):
        TransitConfig(addr="http://127.0.0.1:8200", role_id="r")
    assert TransitConfig(addr="http://x:1", token="t", role_id="r", secret_id="s").uses_approle
    with pytest.raises(ValueError):
        TransitConfig(addr="http://127.0.0.1:8200", token="t", key_name="../sys")
