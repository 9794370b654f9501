"""`make run`: start the daemon, and once it listens print a fresh clinician token, a sample
image and curl commands that work.

The banner (and its token) comes only after the daemon reported that it listens (``serve
--ready-fd``): a daemon that cannot start (port in use, wrong configuration) prints its one-line
reason and exits 78, and no banner or token appears. The key store and blob store named in the
banner are those recorded in the data directory's identity, which the daemon checked.
"""

from __future__ import annotations

import io
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path


def serve_with_banner(env: dict[str, str] | None = None, extra: str = "") -> int:
    """Run ``imagevault serve`` until it exits; print the banner once it is ready."""
    env = dict(os.environ if env is None else env)
    bin_dir = Path(sys.executable).parent
    read_end, write_end = os.pipe()
    daemon = subprocess.Popen([str(bin_dir / "imagevault"), "serve", "--ready-fd", str(write_end)],
                              env=env, pass_fds=(write_end,))
    os.close(write_end)
    signal.signal(signal.SIGTERM, lambda *_: daemon.send_signal(signal.SIGTERM))
    try:
        with os.fdopen(read_end) as ready:
            if ready.readline().strip() != "ready":
                return daemon.wait()  # it said why on stderr
        if extra:
            print(extra, flush=True)
        banner(env)
        return daemon.wait()
    except KeyboardInterrupt:  # Ctrl-C reached the daemon too: it drains and stops
        daemon.send_signal(signal.SIGTERM)
        return daemon.wait()


def describe_stores(env: dict[str, str]) -> str:
    from vault import datadir
    from vault.config import load_config

    identity = datadir.read(load_config(environ=env))
    return identity.describe() if identity is not None else "(no identity recorded)"


def banner(env: dict[str, str]) -> None:
    data_dir = Path(env.get("IMAGEVAULT_DATA_DIR", "./data"))
    listen = env.get("IMAGEVAULT_LISTEN", "127.0.0.1:8080")
    bin_dir = Path(sys.executable).parent
    name = f"make-run-{secrets.token_hex(3)}"
    token = subprocess.run(
        [str(bin_dir / "imagevault"), "token", "create", "--tenant", "demo-clinic", "--role", "clinician",
         "--name", name, "--ttl", "7d"],
        check=True, capture_output=True, text=True, env=env,
    ).stdout.strip()
    sample = Path("build/sample-lesion.jpg")
    sample.parent.mkdir(exist_ok=True)
    if not sample.exists():
        from PIL import Image

        image = Image.new("RGB", (640, 480), (214, 168, 140))
        for x in range(280, 360):
            for y in range(200, 280):
                if (x - 320) ** 2 + (y - 240) ** 2 < 1400:
                    image.putpixel((x, y), (92, 58, 40))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        sample.write_bytes(buffer.getvalue())
    base = f"http://{listen}"
    metadata = ('{"patient_id":"943 476 5919","captured_at":"2026-11-20T10:15:00Z",'
                '"modality":"dermoscopic","body_site":"left_upper_back","lesion_id":"L-0042"}')
    print(f"""
imagevault is listening on {base}
  data directory {data_dir}: {describe_stores(env)}

A clinician token for tenant 'demo-clinic' (name {name}, valid 7 days; shown only now):

  export TOKEN={token}

Store an image (metadata part first, then the file):

  curl -s -H "Authorization: Bearer $TOKEN" \\
       -F 'metadata={metadata};type=application/json' \\
       -F 'file=@{sample};type=image/jpeg' {base}/v1/images

Fetch it back (use the "id" from the answer):

  curl -s -H "Authorization: Bearer $TOKEN" -o lesion.jpg {base}/v1/images/<id>

Search a patient's timeline (patient identifiers travel only in bodies, never in URLs):

  curl -s -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \\
       -d '{{"patient_id":"943 476 5919"}}' {base}/v1/search

Health: {base}/healthz   Readiness: {base}/readyz   Metrics: {base}/metrics   API: {base}/openapi.json
Stop with Ctrl-C (in-flight requests finish first).
""", flush=True)


if __name__ == "__main__":
    sys.exit(serve_with_banner())
