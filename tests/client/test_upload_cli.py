"""`imagevault upload --url URL DIR` against the real app on a loopback port."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.client.test_client import JPEG, base_url
from tests.conftest import PATIENT_IDS
from vault.api.app import create_app
from vault.cli import main

PATIENT = PATIENT_IDS[1]


@pytest.fixture
async def server(aiohttp_server: Any, service: Any) -> Any:
    return await aiohttp_server(create_app(service.config, vault=service))


def session_folder(root: Path) -> Path:
    folder = root / "session"
    for site, count in (("upper_back", 3), ("left_forearm", 2)):
        (folder / site).mkdir(parents=True)
        for n in range(count):
            (folder / site / f"IMG_{n:04d}.jpg").write_bytes(JPEG + site.encode() + bytes([n]))
    return folder


async def run(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


async def test_a_folder_uploads_as_one_session_and_a_rerun_stores_nothing_twice(server, api, tmp_path, monkeypatch, capsys):
    folder = session_folder(tmp_path)
    patient_file = tmp_path / "patient"
    patient_file.write_text(PATIENT + "\n")
    monkeypatch.setenv("IMAGEVAULT_TOKEN", await api.token("clinician"))
    args = ("upload", "--url", base_url(server), "--patient-file", str(patient_file),
            "--data-dir", str(tmp_path / "unused"), str(folder))
    assert await run(*args) == 0
    assert api.service.count_records() == 5
    journal = (folder / ".imagevault-upload.json").read_text()
    assert PATIENT not in journal and PATIENT.replace(" ", "") not in journal
    files = json.loads(journal)["files"]
    assert len(files) == 5 and all(entry["record_id"] for entry in files.values())

    records = [await api.service.get_record(_clinician(), entry["record_id"]) for entry in files.values()]
    assert {r.metadata.body_site for r in records} == {"upper_back", "left_forearm"}
    assert len({r.metadata.session_id for r in records}) == 1
    assert all(r.metadata.patient_id == PATIENT for r in records)

    capsys.readouterr()
    assert await run(*args, "--json") == 0  # nothing left to do
    assert api.service.count_records() == 5
    out = capsys.readouterr()
    assert "5 already stored" in out.err
    summary = json.loads(out.out)
    assert summary["stored"] == 5 and summary["failed"] == 0 and len(summary["record_ids"]) == 5


async def test_a_manifest_names_lesions_and_bad_input_is_refused_in_one_line(server, api, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "session"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(JPEG + b"a")
    (folder / "b.jpg").write_bytes(JPEG + b"b")
    (folder / "session.csv").write_text(
        "file,patient_id,body_site,lesion_id,captured_at\n"
        f"a.jpg,{PATIENT},chest,L-1,2026-11-20T10:00:00Z\n"
        f"b.jpg,{PATIENT},chest,L-2,2026-11-20T10:01:00Z\n"
    )
    monkeypatch.setenv("IMAGEVAULT_TOKEN", await api.token("clinician"))
    assert await run("upload", "--url", base_url(server), str(folder)) == 0
    assert api.service.count_records() == 2

    (folder / "session.csv").write_text("file,patient_name\na.jpg,Jane\n")
    assert await run("upload", "--url", base_url(server), str(folder)) == 1
    err = capsys.readouterr().err
    assert "patient_name" in err and "Traceback" not in err

    monkeypatch.delenv("IMAGEVAULT_TOKEN")
    assert await run("upload", "--url", base_url(server), str(tmp_path / "session")) == 1
    assert "IMAGEVAULT_TOKEN" in capsys.readouterr().err


def test_the_patient_id_and_the_token_cannot_be_given_on_the_command_line():
    from vault.cli import build_parser

    upload = build_parser()._subparsers._group_actions[0].choices["upload"]  # noqa: SLF001
    options = {o for action in upload._actions for o in action.option_strings}  # noqa: SLF001
    assert not {"--patient-id", "--patient", "--token"} & options


def _clinician() -> Any:
    from vault.auth import Principal, Role

    return Principal("clinic-a", Role.CLINICIAN, "check")
