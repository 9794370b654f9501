"""What the console's browser tests and its benchmark share: a daemon with tokens for every
role, real JPEGs of a patient seeded through the API, and Debian's Chromium driven by Playwright.

Chromium is the system one (``apt-get install chromium``; `.ci/run` installs it); Playwright's
own browser download is never used.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx

from tests.infra.daemon import Daemon, cli

ROLES = ("clinician", "dpo", "operator", "auditor", "admin")


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def launch_chromium(playwright: Any) -> Any:
    # --no-sandbox: the tests may run as root in a container, where Chromium's sandbox cannot start.
    return playwright.chromium.launch(executable_path=chromium_path(), headless=True,
                                      args=["--no-sandbox", "--disable-dev-shm-usage"])


def photo(seed: int, size: tuple[int, int] = (800, 600)) -> bytes:
    """A real JPEG (decodable, so that thumbnails and previews get made): a lesion-like ellipse
    whose colour and place follow ``seed``."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, (226, 190 - seed % 40, 170))
    draw = ImageDraw.Draw(image)
    x, y = 200 + (seed * 37) % 300, 150 + (seed * 53) % 200
    draw.ellipse((x, y, x + 180 + seed % 60, y + 140), fill=(90 + seed % 80, 50, 40))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


@dataclass
class ConsoleServer:
    """A real daemon on a loopback port with one token per role (tenant ``clinic-a``)."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    daemon: Daemon | None = None

    def start(self) -> ConsoleServer:
        data_dir = self.root / "data"
        cli(data_dir, "init")
        for role in ROLES:
            tenant = [] if role == "admin" else ["--tenant", "clinic-a"]
            self.tokens[role] = cli(data_dir, "token", "create", *tenant, "--role", role, "--name", f"console-{role}",
                                    "--ttl", "1d").stdout.strip()
        self.daemon = Daemon(data_dir, self.root / "daemon.log", env=self.env)
        return self

    @property
    def url(self) -> str:
        assert self.daemon is not None
        return self.daemon.url

    def log_text(self) -> str:
        return (self.root / "daemon.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()

    def api(self, role: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.tokens[role]}"}, timeout=60)

    def seed(self, patient_id: str, images: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Upload ``images`` (metadata beyond the patient id, plus ``seed``) and wait until their
        renditions are made."""
        records = []
        with self.api("clinician") as client:
            for image in images:
                metadata = {"patient_id": patient_id, "modality": "dermoscopic", **image}
                seed = metadata.pop("seed")
                size = tuple(metadata.pop("size", (800, 600)))

                response = client.post("/v1/images", files={
                    "metadata": (None, json.dumps(metadata), "application/json"),
                    "file": ("photo.jpg", photo(seed, size), "image/jpeg"),
                })
                assert response.status_code == 201, response.text
                records.append(response.json())
            self.wait_renditions(client, [record["id"] for record in records])
        return records

    @staticmethod
    def wait_renditions(client: httpx.Client, ids: list[str], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        waiting = list(ids)
        while waiting:
            record = client.get(f"/v1/images/{waiting[0]}/metadata").json()
            if record.get("renditions", {}).get("state", "ready") != "queued":
                waiting.pop(0)
                continue
            if time.monotonic() > deadline:
                raise TimeoutError("renditions were not made in time")
            time.sleep(0.2)


FIRST_VISIT = date(2024, 3, 10)


def visit_images(count: int, *, visits: int = 3, sites: tuple[str, ...] = ("left_forearm", "upper_back"),
                 lesion: str = "L-7", first_seed: int = 0) -> list[dict[str, Any]]:
    """``count`` images spread over ``visits`` capture sessions 60 days apart from
    ``FIRST_VISIT``, and over ``sites``; the first image of each visit is lesion ``lesion`` on
    the first site."""
    images = []
    for n in range(count):
        visit = n % visits
        image: dict[str, Any] = {
            "seed": first_seed + n,
            "captured_at": f"{FIRST_VISIT + timedelta(days=60 * visit)}T10:{n % 60:02d}:00Z",
            "body_site": sites[(n // visits) % len(sites)],
            "session_id": f"V{visit + 1}",
            "consent": {"teaching": n % 2 == 0, "research": n % 3 == 0},
        }
        if n < visits:
            image["lesion_id"] = lesion
            image["body_site"] = sites[0]
        images.append(image)
    return images


def screenshot_dir() -> Path | None:
    """Where the tests keep their screenshots as documentation (``CONSOLE_SCREENSHOTS``)."""
    target = os.environ.get("CONSOLE_SCREENSHOTS")
    return Path(target) if target else None
