"""The examples of docs/client.md run, as written, against the real app on a loopback port."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from tests.client.test_client import JPEG, base_url
from vault.api.app import create_app

DOC = Path(__file__).resolve().parents[2] / "docs" / "client.md"


def examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


@pytest.fixture
async def server(aiohttp_server: Any, service: Any) -> Any:
    return await aiohttp_server(create_app(service.config, vault=service))


async def test_the_documented_examples_run(server, api, tmp_path, monkeypatch):
    blocks = examples()
    assert len(blocks) >= 3
    clinician, dpo = tmp_path / "clinician.token", tmp_path / "dpo.token"
    clinician.write_text(await api.token("clinician"))
    dpo.write_text(await api.token("dpo"))
    image = tmp_path / "lesion.jpg"
    image.write_bytes(JPEG)
    for name, value in {
        "IMAGEVAULT_URL": base_url(server), "IMAGEVAULT_TOKEN_FILE": str(clinician),
        "IMAGEVAULT_DPO_TOKEN_FILE": str(dpo), "EXAMPLE_IMAGE": str(image),
        "EXAMPLE_OUT": str(tmp_path / "out.jpg"), "EXAMPLE_EXPORT": str(tmp_path / "export.zip"),
    }.items():
        monkeypatch.setenv(name, value)
    for block in blocks:
        await asyncio.to_thread(exec, compile(block, str(DOC), "exec"), {})
    assert (tmp_path / "out.jpg").read_bytes() == JPEG
    assert (tmp_path / "export.zip").stat().st_size > 0
    assert api.service.count_records() == 0  # the last example erased the patient
