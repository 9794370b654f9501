"""The command line as an operator meets it: the data directory's identity refuses a wrong
configuration, destructive commands ask first, every command speaks text or JSON, and start-up
failures are one line with exit status 78 before any banner. Real CLI processes, real OpenBao
and SeaweedFS."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.conftest import make_config, open_vault, png, sample_metadata
from tests.infra.daemon import ROOT
from vault import datadir
from vault.auth import Principal, Role
from vault.cli import build_parser
from vault.config import load_config
from vault.ids import encode_id, new_record_id
from vault.metadata import parse_metadata

EX_CONFIG = 78
PASSPHRASE = "correct horse battery staple"


def snapshot(data_dir: Path, *, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Every path under the data directory with the SHA-256 of its content (directories too)."""
    out: dict[str, str] = {}
    for root, dirs, files in os.walk(data_dir):
        for name in dirs + files:
            path = Path(root) / name
            rel = str(path.relative_to(data_dir))
            if rel.split("/")[0] in skip or name.endswith(".lock") or name == "lock.mdb":
                continue
            out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def one_line_refusal(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == EX_CONFIG, result.stderr
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("imagevault: "), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def transit_env(openbao, key: str) -> dict[str, str]:
    return {"IMAGEVAULT_KMS": "transit", "IMAGEVAULT_VAULT_ADDR": openbao.addr,
            "IMAGEVAULT_VAULT_TOKEN": openbao.root_token, "IMAGEVAULT_VAULT_KEY": key}


def local_env() -> dict[str, str]:
    """The default configuration (``clean`` drops whatever the environment running the tests sets)."""
    return {"IMAGEVAULT_KMS": "local", "IMAGEVAULT_STORE": "fs"}


def clean(env: dict[str, str]) -> dict[str, str]:
    """os.environ minus every imagevault/Vault setting, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGEVAULT_", "VAULT_"))}
    return {**base, **env}


def run(data_dir: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vault.cli", *args], capture_output=True, text=True, timeout=120, check=False,
                          env=clean({"PYTHONPATH": str(ROOT), "IMAGEVAULT_DATA_DIR": str(data_dir), **env}),
                          stdin=subprocess.DEVNULL, cwd=ROOT)


# the identity file ----------------------------------------------------------------------
def test_identity_file_round_trips_and_refuses_damage(tmp_path):
    config = make_config(tmp_path, kms="transit", vault_addr="http://127.0.0.1:1", vault_key="kek-a",
                         store="s3", s3_endpoint="http://Seaweed.example:8333", s3_bucket="images")
    identity = datadir.of_config(config)
    data = datadir.encode(identity)
    assert data.startswith(b"imagevault data directory identity\nversion=1\nblob_format=1\nindex_engine=lmdb\n")
    assert b"s3_endpoint=seaweed.example:8333\n" in data and b"vault_key=kek-a\n" in data
    assert datadir.decode(data) == identity
    for position in (40, len(data) - 10):
        damaged = bytearray(data)
        damaged[position] ^= 1
        with pytest.raises(ValueError):
            datadir.decode(bytes(damaged))
    with pytest.raises(ValueError, match="checksum line"):
        datadir.decode(data[:-20])
    local = datadir.encode(datadir.of_config(make_config(tmp_path)))
    assert b"vault_key" not in local and b"s3_bucket" not in local and b"store=fs\n" in local


def test_transit_directory_refuses_the_local_default_and_init_makes_no_keyring(tmp_path, openbao, transit_key):
    data_dir = tmp_path / "data"
    created = run(data_dir, "init", env=transit_env(openbao, transit_key))
    assert created.returncode == 0 and "Transit key transit/" + transit_key in created.stdout
    before = snapshot(data_dir)
    for args in (("keys", "status"), ("init",), ("audit", "head"), ("gc", "--dry-run"), ("token", "list")):
        one_line_refusal(run(data_dir, *args, env=local_env()), "kms = transit", "kms = local")
    assert not (data_dir / "keys").exists()
    wrong_key = run(data_dir, "keys", "status", env={**transit_env(openbao, transit_key), "IMAGEVAULT_VAULT_KEY": "other"})
    one_line_refusal(wrong_key, "vault_key = " + transit_key, "vault_key = other")
    no_token = run(data_dir, "keys", "status", env={**transit_env(openbao, transit_key), "IMAGEVAULT_VAULT_TOKEN": ""})
    one_line_refusal(no_token, "IMAGEVAULT_VAULT_TOKEN")
    engine = run(data_dir, "keys", "status", env={**transit_env(openbao, transit_key), "IMAGEVAULT_INDEX_ENGINE": "postgres"})
    one_line_refusal(engine, "index_engine")
    assert snapshot(data_dir) == before
    assert run(data_dir, "keys", "status", env=transit_env(openbao, transit_key)).returncode == 0


def test_directory_of_another_index_engine_is_refused(tmp_path):
    data_dir = tmp_path / "data"
    assert run(data_dir, "init", env=local_env()).returncode == 0
    config = load_config(data_dir=data_dir, environ={})
    # As a build with another index engine would have recorded it.
    datadir.write(config, replace(datadir.of_config(config), index_engine="postgres"))
    before = snapshot(data_dir)
    one_line_refusal(run(data_dir, "keys", "status", env=local_env()), "index_engine = postgres", "index_engine = lmdb")
    one_line_refusal(run(data_dir, "init", env=local_env()), "index_engine = postgres")
    (data_dir / "identity").write_bytes((data_dir / "identity").read_bytes().replace(b"postgres", b"lmdb\n#"))
    one_line_refusal(run(data_dir, "keys", "status", env=local_env()), "identity is unusable")
    assert snapshot(data_dir, skip=("identity",)) == {k: v for k, v in before.items() if k != "identity"}


def test_wrong_bucket_is_refused_before_the_store_is_touched(tmp_path, seaweed, new_bucket):
    bucket, other = new_bucket(seaweed, fresh=True), new_bucket(seaweed, fresh=True)
    data_dir = tmp_path / "data"
    assert run(data_dir, "init", env=seaweed.environment(bucket)).returncode == 0
    before = snapshot(data_dir)
    one_line_refusal(run(data_dir, "verify", env=seaweed.environment(other)), f"s3_bucket = {bucket}", f"s3_bucket = {other}")
    one_line_refusal(run(data_dir, "init", env=seaweed.environment(other)), "s3_bucket")
    one_line_refusal(run(data_dir, "gc", "--yes", env=local_env()), "store = s3", "store = fs")
    moved = {**seaweed.environment(bucket), "IMAGEVAULT_S3_ENDPOINT": "http://127.0.0.2:1"}
    one_line_refusal(run(data_dir, "verify", env=moved), "s3_endpoint")
    assert snapshot(data_dir) == before
    with pytest.raises(ClientError):  # the refused init did not create the other bucket
        seaweed.sync_client().head_bucket(Bucket=other)


def test_directory_without_identity_gets_one_from_what_is_there(tmp_path, openbao, transit_key):
    local_dir, transit_dir = tmp_path / "local", tmp_path / "transit"
    assert run(local_dir, "init", env=local_env()).returncode == 0
    assert run(transit_dir, "init", env=transit_env(openbao, transit_key)).returncode == 0
    for data_dir in (local_dir, transit_dir):
        (data_dir / "identity").unlink()  # as an older release left it
    # A keyring on disk is a local directory, none a Transit one, whatever the configuration says.
    one_line_refusal(run(local_dir, "keys", "status", env=transit_env(openbao, transit_key)), "kms = local")
    one_line_refusal(run(transit_dir, "init", env=local_env()), "kms = transit")
    assert not (local_dir / "identity").exists() and not (transit_dir / "keys").exists()
    adopted = run(local_dir, "keys", "status", env={**local_env(), "IMAGEVAULT_LOG_LEVEL": "INFO"})
    assert adopted.returncode == 0 and "had no identity file" in adopted.stderr
    assert datadir.read(load_config(data_dir=local_dir, environ={})).kms == "local"
    again = run(local_dir, "keys", "status", env={**local_env(), "IMAGEVAULT_LOG_LEVEL": "INFO"})
    assert "had no identity file" not in again.stderr  # logged once
    assert run(transit_dir, "init", env=transit_env(openbao, transit_key)).returncode == 0
    assert datadir.read(load_config(data_dir=transit_dir, environ={})).vault_key == transit_key


# destructive commands -------------------------------------------------------------------
async def _records_and_orphan(data_dir: Path) -> None:
    vault = await open_vault(load_config(data_dir=data_dir, environ={}))
    try:
        async def body():
            yield png()

        for tenant in ("clinic-a", "clinic-b"):
            await vault.create_image(Principal(tenant, Role.CLINICIAN, "c"), parse_metadata(sample_metadata()),
                                     "image/png", body())
        writer = await vault.backend.open_writer(encode_id(new_record_id(time.time() - 7200)))
        await writer.write(b"orphan")
        await writer.commit()
    finally:
        await vault.close()


def _versions(data_dir: Path) -> list[int]:
    return json.loads(run(data_dir, "keys", "status", "--json", env=local_env()).stdout)["versions"]


def test_destructive_commands_change_nothing_without_yes(tmp_path):
    data_dir = tmp_path / "data"
    assert run(data_dir, "init", env=local_env()).returncode == 0
    asyncio.run(_records_and_orphan(data_dir))
    assert run(data_dir, "keys", "rotate", env=local_env()).returncode == 0
    assert _versions(data_dir) == [1, 2]
    # The audit trail records that someone looked (and was refused): everything else stays.
    before = snapshot(data_dir, skip=("audit",))
    for args in (("keys", "retire"), ("keys", "epoch"), ("gc",)):
        refused = run(data_dir, *args, env=local_env())
        assert refused.returncode == 1 and "nothing changed" in refused.stderr and "--yes" in refused.stderr
        assert "Traceback" not in refused.stderr
    retire_plan = run(data_dir, "keys", "retire", env=local_env()).stderr
    assert "version(s) 1" in retire_plan and "unreadable" in retire_plan
    assert "1 orphan(s) older than 1h would be deleted" in run(data_dir, "gc", env=local_env()).stderr
    dry = run(data_dir, "keys", "retire", "--dry-run", "--json", env=local_env())
    assert dry.returncode == 0 and json.loads(dry.stdout)["retired"] is False
    gc_dry = run(data_dir, "gc", "--dry-run", "--min-age", "0", "--json", env=local_env())
    assert gc_dry.returncode == 0 and json.loads(gc_dry.stdout)["removed"] == 1
    assert snapshot(data_dir, skip=("audit",)) == before and _versions(data_dir) == [1, 2]

    retired = run(data_dir, "keys", "retire", "--yes", "--json", env=local_env())
    assert retired.returncode == 0 and json.loads(retired.stdout)["retired"] is True and _versions(data_dir) == [2]
    collected = run(data_dir, "gc", "--yes", "--min-age", "0", "--json", env=local_env())
    assert json.loads(collected.stdout)["removed"] == 1


def test_gc_min_age_zero_is_accepted_and_bad_values_name_the_option(tmp_path):
    data_dir = tmp_path / "data"
    assert run(data_dir, "init", env=local_env()).returncode == 0
    assert run(data_dir, "gc", "--min-age", "0", "--dry-run", env=local_env()).returncode == 0
    assert run(data_dir, "gc", "--min-age", "0s", "--dry-run", env=local_env()).returncode == 0
    bad = run(data_dir, "gc", "--min-age", "soon", env=local_env())
    assert bad.returncode == 1 and "--min-age" in bad.stderr and "ttl" not in bad.stderr


# every command: text by default, JSON with --json ----------------------------------------
def leaf_commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    found: set[tuple[str, ...]] = set()
    for action in parser._actions:  # argparse has no public walk of its sub-commands
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found |= leaf_commands(child, (*prefix, name)) or {(*prefix, name)}
    return found


def _cases(tmp_path: Path) -> dict[tuple[str, ...], object]:
    """The arguments of each command, per mode ("text" or "json"); in running order."""
    secret = tmp_path / "passphrase"
    secret.write_text(PASSPHRASE + "\n")
    backups = tmp_path / "backups"
    return {
        ("init",): lambda mode: [],
        ("token", "create"): lambda mode: ["--tenant", "clinic-a", "--role", "clinician", "--name", f"t-{mode}"],
        ("token", "list"): lambda mode: [],
        ("token", "revoke"): lambda mode: [f"t-{mode}"],
        ("keys", "status"): lambda mode: [],
        ("keys", "rotate"): lambda mode: [],
        ("keys", "rewrap"): lambda mode: [],
        ("keys", "retire"): lambda mode: ["--yes"],
        ("keys", "escrow"): lambda mode: [str(tmp_path / f"escrow-{mode}"), "--passphrase-file", str(secret)],
        ("backup",): lambda mode: [str(backups)],
        ("restore",): lambda mode: ["--data-dir", str(tmp_path / f"restored-{mode}"), str(backups),
                                    "--escrow", str(tmp_path / f"escrow-{mode}"), "--passphrase-file", str(secret)],
        ("verify",): lambda mode: [],
        ("gc",): lambda mode: ["--yes"],
        ("retention", "sweep"): lambda mode: ["--dry-run"] if mode == "text" else ["--yes"],
        ("audit", "verify"): lambda mode: [],
        ("audit", "head"): lambda mode: [],
        ("audit", "list"): lambda mode: ["--limit", "5"],
        ("audit", "export"): lambda mode: [],
        ("audit", "verify-export"): lambda mode: [_exported(tmp_path, mode)],
        ("renditions", "backfill"): lambda mode: [],
        ("keys", "epoch"): lambda mode: ["--yes"],
        ("index", "upgrade"): lambda mode: [],
        ("index", "copy"): None,  # needs PostgreSQL: tests/index/test_postgres_cli.py, text and --json
        ("serve",): None,  # test_port_in_use_is_one_line_exit_78_and_no_banner
        ("upload",): None,  # needs a daemon: tests/client/test_upload_cli.py, text and --json
    }


def _exported(tmp_path: Path, mode: str) -> str:
    """An export of the trail as it stands, for verify-export to check."""
    done = run(tmp_path / "data", "audit", "export", env=local_env())
    assert done.returncode == 0, done.stderr
    path = tmp_path / f"export-{mode}.jsonl"
    path.write_text(done.stdout)
    return str(path)


def test_every_command_prints_text_or_json(tmp_path):
    cases = _cases(tmp_path)
    assert leaf_commands(build_parser()) == set(cases), "a command without a case here"
    data_dir = tmp_path / "data"
    env = local_env()
    asyncio.run(_seed_after_init(data_dir))
    for command, arguments in cases.items():
        if arguments is None:
            continue
        for mode in ("text", "json"):
            args = [*command, *arguments(mode), *(["--json"] if mode == "json" else [])]
            done = run(data_dir, *args, env=env)
            where = f"{' '.join(args)}: {done.stderr[-1500:]}"
            assert done.returncode == 0, where
            assert "Traceback" not in done.stdout + done.stderr, where
            if mode == "json":
                if command in (("audit", "list"), ("audit", "export")):
                    assert [json.loads(line) for line in done.stdout.splitlines()], where
                else:
                    json.loads(done.stdout)
            elif command == ("audit", "export"):  # JSON lines in both modes: a machine format
                assert all(json.loads(line) for line in done.stdout.splitlines()), where
            else:
                assert done.stdout.strip(), where
                with pytest.raises(json.JSONDecodeError):
                    json.loads(done.stdout)
                if command == ("token", "create"):
                    assert done.stdout.startswith("ivt_") and done.stdout.count("\n") == 1


async def _seed_after_init(data_dir: Path) -> None:
    assert run(data_dir, "init", env=local_env()).returncode == 0
    vault = await open_vault(load_config(data_dir=data_dir, environ={}))
    try:
        async def body():
            yield png()

        await vault.create_image(Principal("clinic-a", Role.CLINICIAN, "c"), parse_metadata(sample_metadata()),
                                 "image/png", body())
    finally:
        await vault.close()


def test_global_options_may_come_before_the_sub_command(tmp_path):
    data_dir = tmp_path / "data"
    assert run(tmp_path / "elsewhere", "--data-dir", str(data_dir), "init", env=local_env()).returncode == 0
    before = run(tmp_path / "elsewhere", "--data-dir", str(data_dir), "--json", "keys", "status", env=local_env())
    after = run(tmp_path / "elsewhere", "keys", "status", "--data-dir", str(data_dir), "--json", env=local_env())
    assert before.returncode == 0 and json.loads(before.stdout) == json.loads(after.stdout)
    assert not (tmp_path / "elsewhere").exists()


# start-up failures ----------------------------------------------------------------------
def test_port_in_use_is_one_line_exit_78_and_no_banner(tmp_path):
    data_dir = tmp_path / "data"
    assert run(data_dir, "init", env=local_env()).returncode == 0
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        listen = f"127.0.0.1:{busy.getsockname()[1]}"
        served = run(data_dir, "serve", "--listen", listen, env=local_env())
        one_line_refusal(served, f"cannot listen on {listen}", "address already in use")
        banner = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "welcome.py")], capture_output=True, text=True, timeout=60, check=False,
            env=clean({**local_env(), "PYTHONPATH": str(ROOT), "IMAGEVAULT_DATA_DIR": str(data_dir),
                       "IMAGEVAULT_LISTEN": listen, "PATH": os.environ.get("PATH", "")}), cwd=tmp_path,
        )
    assert banner.returncode == EX_CONFIG and banner.stdout == "" and "ivt_" not in banner.stderr
    assert banner.stderr.count("\n") == 1 and "address already in use" in banner.stderr
    tls = run(data_dir, "serve", "--tls-cert", str(tmp_path / "none.pem"), "--tls-key", str(tmp_path / "none.pem"),
              env=local_env())
    one_line_refusal(tls, "TLS")


def test_kms_unreachable_at_start_is_one_line_exit_78(tmp_path, openbao, transit_key):
    data_dir = tmp_path / "data"
    assert run(data_dir, "init", env=transit_env(openbao, transit_key)).returncode == 0
    gone = {**transit_env(openbao, transit_key), "IMAGEVAULT_VAULT_ADDR": "http://127.0.0.1:9"}
    one_line_refusal(run(data_dir, "keys", "status", env=gone), "KMS unreachable")
    one_line_refusal(run(data_dir, "serve", "--listen", "127.0.0.1:0", env=gone), "cannot start the daemon", "KMS unreachable")


def test_banner_names_transit_only_once_the_daemon_listens(tmp_path, openbao, transit_key):
    from tests.infra.process import free_port

    data_dir = tmp_path / "data"
    env = transit_env(openbao, transit_key)
    assert run(data_dir, "init", env=env).returncode == 0
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "welcome.py")], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True, cwd=tmp_path,
        env=clean({**env, "PYTHONPATH": str(ROOT), "IMAGEVAULT_DATA_DIR": str(data_dir),
                   "IMAGEVAULT_LISTEN": f"127.0.0.1:{free_port()}", "PATH": os.environ.get("PATH", "")}),
    )
    try:
        lines = []
        for line in process.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if "export TOKEN=" in line:
                break
        text = "".join(lines)
        assert "imagevault is listening on" in text
        assert f"Transit key transit/{transit_key}" in text and "local keyring" not in text
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0


# progress ------------------------------------------------------------------------------
async def test_rewrap_progress_ends_at_its_total(tmp_path):
    from vault.cli.common import COMMAND_LINE

    vault = await open_vault(make_config(tmp_path / "data"))
    try:
        async def body():
            yield png()

        for n in range(13):
            await vault.create_image(Principal(f"clinic-{n % 3}", Role.CLINICIAN, "c"),
                                     parse_metadata(sample_metadata()), "image/png", body())
        await vault.rotate_keys(COMMAND_LINE, background=False)
        calls: list[tuple[int, int]] = []
        final = await vault.rewrap_keys(COMMAND_LINE, progress=lambda done, total: calls.append((done, total)))
        assert final.state == "done" and final.rewrapped == 13
        # 13 data keys, 3 tenant index keys, the integrity key: all counted, and the bar ends full.
        assert calls[-1] == (17, 17)
        assert all(done <= total == 17 for done, total in calls)
        assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    finally:
        await vault.close()

