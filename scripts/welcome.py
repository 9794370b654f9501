"""Printed by `make run`: a fresh clinician token, a sample image and curl commands that work."""

from __future__ import annotations

import io
import os
import secrets
import subprocess
import sys
from pathlib import Path


def main() -> int:
    data_dir = Path(os.environ.get("IMAGEVAULT_DATA_DIR", "./data"))
    listen = os.environ.get("IMAGEVAULT_LISTEN", "127.0.0.1:8080")
    bin_dir = Path(sys.executable).parent
    name = f"make-run-{secrets.token_hex(3)}"
    token = subprocess.run(
        [str(bin_dir / "imagevault"), "token", "create", "--tenant", "demo-clinic", "--role", "clinician",
         "--name", name, "--ttl", "7d"],
        check=True, capture_output=True, text=True,
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
    if os.environ.get("IMAGEVAULT_STORE") == "s3":
        store = (f"blobs in S3 bucket '{os.environ.get('IMAGEVAULT_S3_BUCKET', 'imagevault')}' at "
                 f"{os.environ.get('IMAGEVAULT_S3_ENDPOINT', 'AWS')}")
    else:
        store = "filesystem blobs"
    metadata = ('{"patient_id":"943 476 5919","captured_at":"2026-11-20T10:15:00Z",'
                '"modality":"dermoscopic","body_site":"left_upper_back","lesion_id":"L-0042"}')
    print(f"""
imagevault is starting on {base}  (data directory: {data_dir}, local keyring, {store})

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
    return 0


if __name__ == "__main__":
    sys.exit(main())
