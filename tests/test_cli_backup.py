"""Backup, key escrow, shred epoch and restore from the command line, as an operator runs them."""

from __future__ import annotations

import json

from tests.infra.daemon import cli


def test_escrow_backup_epoch_and_restore_from_the_command_line(tmp_path):
    data_dir, backups = tmp_path / "data", tmp_path / "backups"
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("a long escrow passphrase\n")
    cli(data_dir, "init")
    cli(data_dir, "token", "create", "--tenant", "clinic-a", "--role", "clinician", "--name", "cam")

    refused = cli(data_dir, "backup", str(backups), check=False)
    assert refused.returncode == 1 and "keys escrow" in refused.stderr.strip().splitlines()[-1]
    cli(data_dir, "keys", "escrow", str(tmp_path / "escrow-1.json"), "--passphrase-file", str(passphrase))
    assert (tmp_path / "escrow-1.json").stat().st_mode & 0o777 == 0o600
    first = json.loads(cli(data_dir, "backup", str(backups), "--json").stdout)

    unconfirmed = cli(data_dir, "keys", "epoch", check=False)
    assert unconfirmed.returncode == 1 and "--yes" in unconfirmed.stderr
    epoch = json.loads(cli(data_dir, "keys", "epoch", "--yes", "--json").stdout)
    assert epoch["state"] == "done" and epoch["number"] == 1
    status = json.loads(cli(data_dir, "keys", "status", "--json").stdout)
    assert "warning" in status["shred_epoch"]  # no snapshot since the epoch yet
    assert cli(data_dir, "backup", str(backups), check=False).returncode == 1  # escrow-1 predates the epoch
    cli(data_dir, "keys", "escrow", str(tmp_path / "escrow-2.json"), "--passphrase-file", str(passphrase))
    second = json.loads(cli(data_dir, "backup", str(backups), "--json").stdout)
    assert second["snapshots_removed"] == [first["snapshot"]]
    assert "warning" not in json.loads(cli(data_dir, "keys", "status", "--json").stdout)["shred_epoch"]

    target = tmp_path / "restored"
    without = cli(target, "restore", str(backups), check=False)
    assert without.returncode == 1 and "escrow" in without.stderr
    old_escrow = cli(target, "restore", str(backups), "--escrow", str(tmp_path / "escrow-1.json"),
                     "--passphrase-file", str(passphrase), check=False)
    assert old_escrow.returncode == 1 and "escrow made after" in old_escrow.stderr
    assert not target.exists() or not any(target.iterdir())  # a refused restore leaves nothing
    restored = cli(target, "restore", str(backups), "--escrow", str(tmp_path / "escrow-2.json"),
                   "--passphrase-file", str(passphrase), "--json")
    assert json.loads(restored.stdout)["snapshot"] == second["snapshot"]
    tokens = json.loads(cli(target, "token", "list", "--json").stdout)
    assert [t["name"] for t in tokens] == ["cam"]
