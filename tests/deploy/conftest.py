"""The metric names the daemon exports, scraped from a real service after some traffic."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import random_image
from tests.deploy.promql import exposed_names


async def scrape_after_traffic(api: Any) -> str:
    record = await api.upload(random_image(4096))
    headers = await api.headers()
    for method, path, body in (
        ("GET", f"/v1/images/{record['id']}", None),
        ("GET", f"/v1/images/{record['id']}/metadata", None),
        ("POST", "/v1/search", {"patient_id": "nobody-0"}),
        ("GET", "/v1/images/not-an-id", None),
    ):
        response = await api.client.request(method, path, headers=headers, json=body)
        await response.read()
    await api.client.get("/readyz")
    response = await api.client.get("/metrics")
    assert response.status == 200
    return await response.text()


@pytest.fixture
async def exported_metric_names(api: Any) -> set[str]:
    return exposed_names(await scrape_after_traffic(api))
