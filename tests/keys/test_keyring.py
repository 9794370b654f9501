"""The embedded local keyring: wrapping, file layout, master key modes, rotation, retirement."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import stat
import threading

import nacl.pwhash.argon2id
import pytest

from vault.errors import InvalidRequest, KeyMaterialError
from vault.keys.base import key_version_of
from vault.keys.keyring import LocalKeyring

# Cheap Argon2id limits keep the passphrase tests fast; one test checks the real defaults.
FAST = {
    "opslimit": nacl.pwhash.argon2id.OPSLIMIT_MIN,
    "memlimit": nacl.pwhash.argon2id.MEMLIMIT_MIN,
}


def dek() -> bytes:
    return secrets.token_bytes(32)


def read_doc(path) -> dict:
    return json.loads((path / "keyring.json").read_text())


@pytest.fixture
def keys_dir(tmp_path):
    return tmp_path / "data" / "keys"


@pytest.fixture
def keyring(keys_dir):
    return LocalKeyring.create(keys_dir)


async def test_wrap_unwrap_round_trip(keyring):
    deks = [dek() for _ in range(5)]
    wrapped = await keyring.wrap_data_keys(deks)
    assert await keyring.unwrap_data_keys(wrapped) == deks
    assert await keyring.unwrap_data_key(await keyring.wrap_data_key(deks[0])) == deks[0]


async def test_wrapped_key_is_local_v1_with_72_byte_payload(keyring):
    wrapped = await keyring.wrap_data_key(dek())
    scheme, version, payload = wrapped.split(":")
    assert (scheme, version) == ("local", "v1")
    assert key_version_of(wrapped) == 1
    assert "\n" not in payload
    assert len(base64.b64decode(payload, validate=True)) == 24 + 32 + 16


async def test_wrapping_the_same_dek_twice_gives_different_strings(keyring):
    one = dek()
    assert await keyring.wrap_data_key(one) != await keyring.wrap_data_key(one)


def test_create_sets_private_file_modes(keys_dir):
    old_umask = os.umask(0o022)
    try:
        LocalKeyring.create(keys_dir)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(keys_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(keys_dir / "master.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(keys_dir / "keyring.json").st_mode) == 0o600
    assert len((keys_dir / "master.key").read_bytes()) == 32


async def test_rotate_keeps_keyring_json_mode_0600(keyring, keys_dir):
    await keyring.rotate()
    assert stat.S_IMODE(os.stat(keys_dir / "keyring.json").st_mode) == 0o600
    assert not [p for p in keys_dir.iterdir() if p.name.endswith(".tmp")]


async def test_create_is_idempotent_and_opens_the_existing_keyring(keys_dir):
    first = LocalKeyring.create(keys_dir)
    wrapped = await first.wrap_data_key(b"k" * 32)
    master = (keys_dir / "master.key").read_bytes()
    second = LocalKeyring.create(keys_dir)
    assert (keys_dir / "master.key").read_bytes() == master
    assert await second.unwrap_data_key(wrapped) == b"k" * 32


def test_exists_reports_keyring_presence(keys_dir):
    assert not LocalKeyring.exists(keys_dir)
    LocalKeyring.create(keys_dir)
    assert LocalKeyring.exists(keys_dir)


def test_open_missing_keyring_names_the_problem(keys_dir):
    with pytest.raises(KeyMaterialError, match="no keyring"):
        LocalKeyring.open(keys_dir)


def test_open_corrupt_keyring_json_names_the_problem(keyring, keys_dir):
    (keys_dir / "keyring.json").write_text("{not json")
    with pytest.raises(KeyMaterialError, match="corrupt"):
        LocalKeyring.open(keys_dir)


def test_open_with_edited_sealed_kek_names_the_problem(keyring, keys_dir):
    doc = read_doc(keys_dir)
    sealed = bytearray(base64.b64decode(doc["keks"]["1"]["sealed"]))
    sealed[-1] ^= 1
    doc["keks"]["1"]["sealed"] = base64.b64encode(bytes(sealed)).decode()
    (keys_dir / "keyring.json").write_text(json.dumps(doc))
    with pytest.raises(KeyMaterialError, match="KEK version 1 fails authentication"):
        LocalKeyring.open(keys_dir)


def test_wrong_master_key_file_gives_clear_error(keyring, keys_dir):
    (keys_dir / "master.key").write_bytes(secrets.token_bytes(32))
    with pytest.raises(KeyMaterialError, match="master key does not match"):
        LocalKeyring.open(keys_dir)


def test_missing_master_key_file_gives_clear_error(keyring, keys_dir):
    (keys_dir / "master.key").unlink()
    with pytest.raises(KeyMaterialError, match="master.key is missing"):
        LocalKeyring.open(keys_dir)


def test_truncated_master_key_file_gives_clear_error(keyring, keys_dir):
    (keys_dir / "master.key").write_bytes(b"short")
    with pytest.raises(KeyMaterialError, match="exactly 32 bytes"):
        LocalKeyring.open(keys_dir)


async def test_passphrase_keyring_round_trips_without_a_key_file(keys_dir):
    ring = LocalKeyring.create(keys_dir, passphrase="correct horse", **FAST)
    assert not (keys_dir / "master.key").exists()
    assert read_doc(keys_dir)["master"]["kind"] == "argon2id"
    wrapped = await ring.wrap_data_key(b"p" * 32)
    reopened = LocalKeyring.open(keys_dir, passphrase="correct horse")
    assert await reopened.unwrap_data_key(wrapped) == b"p" * 32


def test_wrong_passphrase_gives_clear_error(keys_dir):
    LocalKeyring.create(keys_dir, passphrase="correct horse", **FAST)
    with pytest.raises(KeyMaterialError, match="master key does not match .wrong passphrase"):
        LocalKeyring.open(keys_dir, passphrase="battery staple")


def test_passphrase_keyring_without_passphrase_names_the_variable(keys_dir):
    LocalKeyring.create(keys_dir, passphrase="correct horse", **FAST)
    with pytest.raises(KeyMaterialError, match="IMAGEVAULT_KEYRING_PASSPHRASE"):
        LocalKeyring.open(keys_dir)


def test_key_file_keyring_refuses_a_passphrase(keyring, keys_dir):
    with pytest.raises(KeyMaterialError, match="passphrase was given"):
        LocalKeyring.open(keys_dir, passphrase="anything")


def test_passphrase_keyring_defaults_to_moderate_argon2id(keys_dir):
    LocalKeyring.create(keys_dir, passphrase="correct horse")
    master = read_doc(keys_dir)["master"]
    assert master["opslimit"] == nacl.pwhash.argon2id.OPSLIMIT_MODERATE
    assert master["memlimit"] == nacl.pwhash.argon2id.MEMLIMIT_MODERATE
    assert len(base64.b64decode(master["salt"])) == 16


async def test_rotate_new_wraps_use_next_version_and_old_still_unwrap(keyring):
    old_dek = dek()
    old = await keyring.wrap_data_key(old_dek)
    assert await keyring.rotate() == 2
    new = await keyring.wrap_data_key(dek())
    assert old.startswith("local:v1:") and new.startswith("local:v2:")
    assert await keyring.unwrap_data_key(old) == old_dek
    status = await keyring.status()
    assert status.current_version == 2
    assert (status.min_decryption_version, status.versions) == (1, (1, 2))


async def test_rewrap_moves_keys_to_the_current_version(keyring):
    deks = [dek() for _ in range(3)]
    old = await keyring.wrap_data_keys(deks)
    await keyring.rotate()
    await keyring.rotate()
    rewrapped = await keyring.rewrap_data_keys(old)
    assert [key_version_of(w) for w in rewrapped] == [3, 3, 3]
    assert await keyring.unwrap_data_keys(rewrapped) == deks


async def test_retire_destroys_old_versions_but_current_keys_still_unwrap(keyring, keys_dir):
    old_dek, kept_dek = dek(), dek()
    old = await keyring.wrap_data_key(old_dek)
    kept = await keyring.wrap_data_key(kept_dek)
    sealed_v1 = read_doc(keys_dir)["keks"]["1"]["sealed"]
    await keyring.rotate()
    kept = (await keyring.rewrap_data_keys([kept]))[0]
    await keyring.retire(below=2)

    [result] = await keyring.unwrap_data_keys([old])
    assert isinstance(result, KeyMaterialError) and "retired" in result.message
    assert await keyring.unwrap_data_key(kept) == kept_dek
    doc = read_doc(keys_dir)
    assert set(doc["keks"]) == {"2"} and doc["min_decryption_version"] == 2
    assert sealed_v1 not in (keys_dir / "keyring.json").read_text()
    status = await keyring.status()
    assert status.versions == (2,) and status.min_decryption_version == 2
    # A reopened keyring agrees: the version is gone, not merely disabled.
    reopened = LocalKeyring.open(keys_dir)
    assert isinstance((await reopened.unwrap_data_keys([old]))[0], KeyMaterialError)


async def test_retire_refuses_the_current_version(keyring):
    await keyring.rotate()
    with pytest.raises(InvalidRequest, match="current key version 2"):
        await keyring.retire(below=3)
    assert (await keyring.status()).versions == (1, 2)


async def test_retire_is_idempotent(keyring, keys_dir):
    await keyring.rotate()
    await keyring.retire(below=2)
    before = (keys_dir / "keyring.json").read_bytes()
    await keyring.retire(below=2)
    await keyring.retire(below=1)
    assert (keys_dir / "keyring.json").read_bytes() == before


async def test_one_bad_item_in_a_batch_fails_only_that_item(keyring):
    deks = [dek(), dek()]
    good = await keyring.wrap_data_keys(deks)
    tampered = good[0][:-6] + ("AAAA" if good[0][-6:-2] != "AAAA" else "BBBB") + good[0][-2:]
    batch = [
        good[0],
        "garbage",
        "vault:v1:abcd",
        "local:v1:not-base64!",
        "local:v1:" + base64.b64encode(b"short").decode(),
        "local:v9:" + good[1].split(":", 2)[2],
        tampered,
        good[1],
    ]
    results = await keyring.unwrap_data_keys(batch)
    assert results[0] == deks[0] and results[-1] == deks[1]
    assert all(isinstance(r, KeyMaterialError) for r in results[1:-1])
    rewrapped = await keyring.rewrap_data_keys(batch)
    assert isinstance(rewrapped[0], str) and isinstance(rewrapped[-1], str)
    assert all(isinstance(r, KeyMaterialError) for r in rewrapped[1:-1])


async def test_unknown_version_is_reported_as_such(keyring):
    wrapped = await keyring.wrap_data_key(dek())
    [result] = await keyring.unwrap_data_keys(["local:v7:" + wrapped.split(":", 2)[2]])
    assert isinstance(result, KeyMaterialError) and "unknown key version 7" in result.message


async def test_relabelled_version_fails_authentication(keyring):
    await keyring.rotate()
    wrapped = await keyring.wrap_data_key(dek())
    relabelled = wrapped.replace("local:v2:", "local:v1:", 1)
    [result] = await keyring.unwrap_data_keys([relabelled])
    assert isinstance(result, KeyMaterialError)


async def test_unwrap_data_key_raises_key_material_error(keyring):
    with pytest.raises(KeyMaterialError):
        await keyring.unwrap_data_key("local:v1:AAAA")


async def test_wrap_rejects_a_dek_of_the_wrong_length(keyring):
    with pytest.raises(ValueError, match="32 bytes"):
        await keyring.wrap_data_keys([b"too short"])


async def test_another_instance_sees_a_rotation_made_by_the_first(keys_dir):
    daemon = LocalKeyring.create(keys_dir)
    cli = LocalKeyring.open(keys_dir)
    assert (await daemon.status()).current_version == 1
    await cli.rotate()
    assert (await daemon.status()).current_version == 2
    wrapped = await daemon.wrap_data_key(dek())
    assert wrapped.startswith("local:v2:")
    assert await cli.unwrap_data_key(wrapped) == await daemon.unwrap_data_key(wrapped)


async def test_another_instance_sees_a_retirement_made_by_the_first(keys_dir):
    daemon = LocalKeyring.create(keys_dir)
    old = await daemon.wrap_data_key(dek())
    cli = LocalKeyring.open(keys_dir)
    await cli.rotate()
    await cli.retire(below=2)
    assert isinstance((await daemon.unwrap_data_keys([old]))[0], KeyMaterialError)


def test_concurrent_rotations_from_two_instances_lose_no_version(keys_dir):
    first = LocalKeyring.create(keys_dir)
    second = LocalKeyring.open(keys_dir)

    def rotate_many(ring: LocalKeyring) -> None:
        for _ in range(10):
            asyncio.run(ring.rotate())

    threads = [threading.Thread(target=rotate_many, args=(r,)) for r in (first, second, first)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    status = asyncio.run(LocalKeyring.open(keys_dir).status())
    assert status.current_version == 31
    assert status.versions == tuple(range(1, 32))


async def test_concurrent_rotate_tasks_get_distinct_versions(keyring):
    versions = await asyncio.gather(*(keyring.rotate() for _ in range(8)))
    assert sorted(versions) == list(range(2, 10))


async def test_status_reports_local_provider(keyring, keys_dir):
    status = await keyring.status()
    assert status.provider == "local"
    assert (status.current_version, status.min_decryption_version, status.versions) == (1, 1, (1,))
    assert status.details["master"] == "file"
    await keyring.check()
