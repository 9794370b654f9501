"""A minimal S3 client for the benchmark driver: aiohttp for transport, botocore for signing.

The driver sends every target's requests through the same aiohttp ``ClientSession`` so the
client costs the same for each; only the request shape differs (S3 PUT of the raw bytes vs a
multipart POST). Requests are signed with SigV4 by botocore's own signer, with
``UNSIGNED-PAYLOAD`` as the body hash: botocore would otherwise SHA-256 every body on the
client over plain HTTP, CPU that this 2-core machine would take from the servers under test,
and that the imagevault and sink clients do not spend either. No checksum headers are added.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials


class S3Client:
    def __init__(self, endpoint: str, access_key: str, secret_key: str, region: str = "us-east-1") -> None:
        self.endpoint = endpoint.rstrip("/")
        self._signer = SigV4Auth(Credentials(access_key, secret_key), "s3", region)

    def signed_headers(self, method: str, path: str, headers: dict[str, str] | None = None) -> dict[str, str]:
        request = AWSRequest(method=method, url=self.endpoint + path, headers=dict(headers or {}))
        request.context["payload_signing_enabled"] = False  # -> X-Amz-Content-SHA256: UNSIGNED-PAYLOAD
        self._signer.add_auth(request)
        return dict(request.headers.items())

    async def put(self, session: Any, path: str, data: bytes, content_type: str = "image/jpeg") -> int:
        headers = self.signed_headers("PUT", path, {"Content-Type": content_type})
        async with session.put(self.endpoint + path, data=data, headers=headers) as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"S3 PUT {path}: HTTP {response.status}")
            return len(data)

    async def get(self, session: Any, path: str, byte_range: tuple[int, int] | None = None) -> int:
        extra = {"Range": f"bytes={byte_range[0]}-{byte_range[1] - 1}"} if byte_range else {}
        headers = self.signed_headers("GET", path, extra)
        async with session.get(self.endpoint + path, headers=headers) as response:
            if response.status not in (200, 206):
                raise RuntimeError(f"S3 GET {path}: HTTP {response.status}")
            received = 0
            while piece := await response.content.readany():
                received += len(piece)
            return received

    async def delete(self, session: Any, path: str) -> None:
        headers = self.signed_headers("DELETE", path)
        async with session.delete(self.endpoint + path, headers=headers) as response:
            await response.read()

    def sync_request(self, method: str, path: str, data: bytes | None = None) -> int:
        """One blocking request (set-up and readiness probes); returns the HTTP status."""
        headers = self.signed_headers(method, path)
        request = urllib.request.Request(self.endpoint + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                response.read()
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code
