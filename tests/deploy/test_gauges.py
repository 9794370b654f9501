"""Gauges read from disk on the readiness timer: free space, LMDB map use, the rewrap job and
the last scrub, including a scrub or rewrap that another process (the command line) ran."""

from __future__ import annotations

from tests.conftest import random_image
from tests.infra.blobs import open_raw_blobs
from tests.infra.daemon import cli
from vault.cli.common import COMMAND_LINE


def sample(service, name: str, labels: dict[str, str] | None = None) -> float | None:
    return service.metrics.registry.get_sample_value(name, labels or {})


async def test_disk_and_map_gauges_describe_the_data_directory(service):
    service.publish_gauges()
    free, size = sample(service, "imagevault_data_dir_free_bytes"), sample(service, "imagevault_data_dir_size_bytes")
    assert 0 < free <= size
    for environment in ("index", "audit"):
        used = sample(service, "imagevault_lmdb_map_used_ratio", {"environment": environment})
        assert 0 < used <= 1
        assert sample(service, "imagevault_lmdb_map_size_bytes", {"environment": environment}) == service.config.lmdb_map_size


async def test_a_scrub_run_by_the_command_line_shows_in_the_daemons_gauges(api, service):
    records = [await api.upload(random_image(20_000, n)) for n in range(3)]
    service.publish_gauges()
    assert sample(service, "imagevault_scrub_corrupt_blobs") == 0
    assert sample(service, "imagevault_scrub_last_completed_timestamp_seconds") == 0
    async with open_raw_blobs(service.config) as raw:
        blob = bytearray(await raw.read(records[1]["id"]))
        blob[-100] ^= 1
        await raw.write(records[1]["id"], bytes(blob))
    result = cli(service.config.data_dir, "verify", check=False)
    assert result.returncode != 0 and records[1]["id"] in result.stdout
    assert sample(service, "imagevault_scrub_corrupt_blobs") == 0  # not until the timer reads it
    service.publish_gauges()
    assert sample(service, "imagevault_scrub_corrupt_blobs") == 1
    assert sample(service, "imagevault_scrub_last_completed_timestamp_seconds") > 0


async def test_the_rewrap_job_and_the_audit_head_are_exported(api, service):
    await api.upload(random_image(5000))
    await service.rotate_keys(COMMAND_LINE, background=False)
    service.publish_gauges()
    assert sample(service, "imagevault_rewrap_running") == 1
    assert sample(service, "imagevault_rewrap_keys_done") == 0
    await service.rewrap_keys(COMMAND_LINE)
    service.publish_gauges()
    assert sample(service, "imagevault_rewrap_running") == 0
    assert sample(service, "imagevault_audit_head_seq") == service.audit.head()[0] > 0
