"""``imagevault audit export`` / ``verify-export``: the chain as JSON lines a receiver can check.

``independent_check`` is the algorithm of docs/format.md ("Audit export") written from the
document with the standard library only, so the format is checked by something that shares no
code with the exporter.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.infra.daemon import ROOT, cli


def independent_check(lines: list[str], prev_hash: str | None = None) -> int:
    """docs/format.md's receiver check; returns the number of entries, raises AssertionError."""
    count = 0
    last_seq = None
    for text in lines:
        line = json.loads(text)
        entry = base64.b64decode(line["entry"], validate=True)
        assert hashlib.sha256(entry).hexdigest() == line["hash"]
        assert entry[-32:].hex() == line["prev_hash"]
        assert entry[:4] in (b"IVA1", b"IVA2")
        assert struct.unpack(">Q", entry[4:12])[0] == line["seq"]
        if last_seq is not None:
            assert line["seq"] == last_seq + 1
        if line["seq"] == 1:
            assert line["prev_hash"] == "00" * 32
        if prev_hash is not None:
            assert line["prev_hash"] == prev_hash
        prev_hash, last_seq = line["hash"], line["seq"]
        count += 1
    return count


def environment(data_dir: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "IMAGEVAULT_DATA_DIR": str(data_dir)}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    cli(data, "init")
    for name in ("a", "b", "c"):
        cli(data, "token", "create", "--tenant", "clinic-a", "--role", "clinician", "--name", name)
    return data


def export(data_dir: Path, *args: str) -> list[str]:
    return cli(data_dir, "audit", "export", *args).stdout.splitlines()


def test_export_streams_the_whole_chain_and_its_own_audit_entry(data_dir):
    lines = export(data_dir)
    assert independent_check(lines) == 4
    seqs = [json.loads(line)["seq"] for line in lines]
    assert seqs == [1, 2, 3, 4]
    last = json.loads(lines[-1])
    assert last["action"] == "audit_read" and last["actor"]["name"] == "cli"
    assert last["details"] == {"after": 0, "export": True, "follow": False}
    # The fields are the audit listing's, plus the hashed bytes.
    listed = json.loads(cli(data_dir, "audit", "list", "--limit", "1", "--json").stdout)
    assert set(json.loads(lines[0])) == set(listed) | {"entry"}


def test_an_export_after_a_seq_continues_the_previous_one(data_dir, tmp_path):
    first = export(data_dir)
    head = json.loads(first[-1])
    second = export(data_dir, "--after", str(head["seq"]))
    assert json.loads(second[0])["seq"] == head["seq"] + 1
    assert independent_check(second, prev_hash=head["hash"]) == 1
    both = tmp_path / "both.jsonl"
    both.write_text("\n".join(first + second) + "\n")
    assert json.loads(cli(data_dir, "audit", "verify-export", str(both), "--json").stdout)["entries"] == 5
    part = tmp_path / "part.jsonl"
    part.write_text("\n".join(second) + "\n")
    ok = cli(data_dir, "audit", "verify-export", str(part), "--prev-hash", head["hash"], "--json")
    assert json.loads(ok.stdout)["ok"] is True
    wrong = cli(data_dir, "audit", "verify-export", str(part), "--prev-hash", "ab" * 32, "--json", check=False)
    assert wrong.returncode == 1 and "not the hash of the entry before" in wrong.stderr


@pytest.mark.parametrize("damage, reason", [
    (lambda lines: lines[:1] + lines[2:], "entries missing"),
    (lambda lines: [lines[0].replace('"outcome":"ok"', '"outcome":"forbidden"')] + lines[1:], "JSON fields differ"),
    (lambda lines: lines[:1] + [json.dumps({**json.loads(lines[1]), "hash": "00" * 32})] + lines[2:], "SHA-256"),
    (lambda lines: lines[1:], None),  # starts at seq 2: a continuation, accepted
    (lambda lines: ["not json"] + lines, "not an export line"),
])
def test_verify_export_finds_the_first_damaged_line(data_dir, tmp_path, damage, reason):
    lines = damage(export(data_dir))
    path = tmp_path / "export.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = cli(data_dir, "audit", "verify-export", str(path), "--json", check=False)
    report = json.loads(result.stdout)
    if reason is None:
        assert result.returncode == 0 and report["first_seq"] == 2
        return
    assert result.returncode == 1 and report["ok"] is False
    assert reason in report["reason"] and "Traceback" not in result.stderr


def test_follow_prints_new_entries_and_ends_cleanly_on_ctrl_c(data_dir):
    process = subprocess.Popen(
        [sys.executable, "-m", "vault.cli", "audit", "export", "--follow", "--interval", "0.1"],
        env=environment(data_dir), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        lines: list[str] = []
        while len(lines) < 4 and time.monotonic() < deadline:
            lines.append(process.stdout.readline())  # type: ignore[union-attr]
        cli(data_dir, "token", "create", "--tenant", "clinic-a", "--role", "dpo", "--name", "later")
        lines.append(process.stdout.readline())  # type: ignore[union-attr]
        assert json.loads(lines[-1])["action"] == "token_create"
    finally:
        process.send_signal(signal.SIGINT)
        rest, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "Traceback" not in err and "audit export: 5 entries" in err
    assert rest == ""
    assert independent_check([line.rstrip("\n") for line in lines]) == 5


def test_verify_export_reads_standard_input_and_needs_no_data_directory(data_dir, tmp_path):
    text = "\n".join(export(data_dir)) + "\n"
    result = subprocess.run(
        [sys.executable, "-m", "vault.cli", "audit", "verify-export", "-", "--json"], input=text, capture_output=True,
        text=True, env=environment(tmp_path / "no-such-dir"), cwd=ROOT, check=False,
    )
    assert result.returncode == 0 and json.loads(result.stdout)["entries"] == 4
    assert not (tmp_path / "no-such-dir").exists()
