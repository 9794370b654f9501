"""``imagevault renditions backfill`` as a subprocess (``python -m vault.cli``), its decoder
processes spawned from the command: jobs for records without one, made, and a second run finds
nothing left."""

from __future__ import annotations

import io
import json

from PIL import Image

from tests.conftest import sample_metadata
from tests.infra.daemon import cli
from vault.auth import Principal, Role
from vault.config import load_config
from vault.ids import decode_id
from vault.index import schema
from vault.metadata import parse_metadata
from vault.service import Vault


def jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (900, 600), (120, 30, 200)).save(out, "JPEG")
    return out.getvalue()


async def test_backfill_command_makes_missing_renditions(tmp_path):
    data_dir = tmp_path / "data"
    cli(data_dir, "init")
    vault = await Vault.open(load_config(data_dir=data_dir, environ={}))
    try:
        async def body():
            yield jpeg()

        record = await vault.create_image(Principal("clinic-a", Role.CLINICIAN, "t"),
                                          parse_metadata(sample_metadata()), "image/jpeg", body())
        rid = record.id
        # As if stored before renditions existed.
        await vault.index.write(lambda t: t.delete_key(schema.DB_JOBS, schema.rendition_job_key(decode_id(rid))))
    finally:
        await vault.close()
    result = cli(data_dir, "renditions", "backfill", "--json", timeout=120)
    report = json.loads(result.stdout)
    assert (report["queued_now"], report["processed"], report["ready"]) == (1, 1, 1), result.stderr
    again = json.loads(cli(data_dir, "renditions", "backfill", "--json", timeout=120).stdout)
    assert (again["queued_now"], again["processed"]) == (0, 0)
