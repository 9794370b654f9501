"""Raw access to stored blobs behind imagevault's back, the same way on every backend.

Tamper tests must really tamper the stored bytes: on the filesystem they rewrite the file, on
S3 they overwrite the object in the bucket with a plain aiobotocore client of their own that
talks to SeaweedFS directly (never through the service's backend object). Leak tests read
every stored byte and every object key and metadata field.

    async with open_raw_blobs(service.config) as raw:
        blob = await raw.read(record_id)
        await raw.write(record_id, blob[:-1000])
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

from vault.config import Config


class RawBlobs(Protocol):
    async def read(self, blob_id: str) -> bytes: ...

    async def write(self, blob_id: str, data: bytes) -> None:
        """Store ``data`` as the blob of ``blob_id`` (creating or replacing it)."""

    async def delete(self, blob_id: str) -> None: ...

    async def exists(self, blob_id: str) -> bool: ...

    async def leftovers(self) -> list[str]:
        """Names of every committed blob and every temporary (an unfinished write)."""

    async def everything(self) -> list[tuple[str, bytes]]:
        """(name, bytes) of every stored item: name, metadata and content, for leak greps."""


class FsRawBlobs:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, blob_id: str) -> Path:
        return self.root / blob_id[-2:].lower() / f"{blob_id}.ivb"

    async def read(self, blob_id: str) -> bytes:
        return self.path(blob_id).read_bytes()

    async def write(self, blob_id: str, data: bytes) -> None:
        self.path(blob_id).parent.mkdir(parents=True, exist_ok=True)
        self.path(blob_id).write_bytes(data)

    async def delete(self, blob_id: str) -> None:
        self.path(blob_id).unlink()

    async def exists(self, blob_id: str) -> bool:
        return self.path(blob_id).exists()

    def _files(self) -> list[Path]:
        return [Path(root) / name for root, _, names in os.walk(self.root) for name in names]

    async def leftovers(self) -> list[str]:
        # Not the readiness probe's file: it lives for an instant, on a timer, and is no upload's.
        return sorted(str(p) for p in self._files()
                      if p.suffix == ".ivb" or (p.parent.name == "tmp" and not p.name.startswith("probe.")))

    async def everything(self) -> list[tuple[str, bytes]]:
        return [(str(p), p.read_bytes()) for p in self._files()]


class S3RawBlobs:
    PREFIX = "blobs/"

    def __init__(self, client: Any, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    def key(self, blob_id: str) -> str:
        return self.PREFIX + blob_id

    async def read(self, blob_id: str) -> bytes:
        answer = await self.client.get_object(Bucket=self.bucket, Key=self.key(blob_id))
        async with answer["Body"] as body:
            return await body.read()

    async def write(self, blob_id: str, data: bytes) -> None:
        await self.client.put_object(Bucket=self.bucket, Key=self.key(blob_id), Body=data)

    async def delete(self, blob_id: str) -> None:
        await self.client.delete_object(Bucket=self.bucket, Key=self.key(blob_id))

    async def exists(self, blob_id: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            await self.client.head_object(Bucket=self.bucket, Key=self.key(blob_id))
        except ClientError as exc:
            if exc.response["ResponseMetadata"]["HTTPStatusCode"] == 404:
                return False
            raise
        return True

    async def _keys(self) -> list[str]:
        keys = []
        async for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            keys.extend(entry["Key"] for entry in page.get("Contents", []))
        return keys

    async def uploads(self) -> list[tuple[str, str]]:
        """(key, upload id) of every unfinished multipart upload."""
        answer = await self.client.list_multipart_uploads(Bucket=self.bucket)
        return [(u["Key"], u["UploadId"]) for u in answer.get("Uploads", [])]

    async def leftovers(self) -> list[str]:
        names = [k for k in await self._keys() if k.startswith(self.PREFIX)]
        names += [f"upload:{key}" for key, _ in await self.uploads()]
        return sorted(names)

    async def everything(self) -> list[tuple[str, bytes]]:
        out = []
        for key in await self._keys():
            answer = await self.client.get_object(Bucket=self.bucket, Key=key)
            async with answer["Body"] as body:
                content = await body.read()
            described = repr({k: answer.get(k) for k in ("Metadata", "ContentType", "ContentDisposition",
                                                         "ContentEncoding", "TagCount")}).encode()
            out.append((key, key.encode() + b"\n" + described + b"\n" + content))
        return out


_session: Any = None


@asynccontextmanager
async def s3_client(endpoint: str, access_key: str, secret_key: str) -> AsyncIterator[Any]:
    """A plain aiobotocore S3 client (path style), independent of imagevault's backend."""
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    global _session
    if _session is None:  # a session parses the S3 service model once (0.1-0.2 s)
        _session = get_session()
    config = AioConfig(s3={"addressing_style": "path"}, connect_timeout=2, read_timeout=30,
                       retries={"max_attempts": 1}, max_pool_connections=32)
    async with _session.create_client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=access_key, aws_secret_access_key=secret_key, config=config,
    ) as client:
        yield client


@asynccontextmanager
async def open_raw_blobs(config: Config) -> AsyncIterator[RawBlobs]:
    """Raw blob access for the store ``config`` describes."""
    if config.store == "fs":
        yield FsRawBlobs(config.blobs_dir)
        return
    assert config.s3_endpoint and config.s3_access_key and config.s3_secret_key
    async with s3_client(config.s3_endpoint, config.s3_access_key, config.s3_secret_key) as client:
        yield S3RawBlobs(client, config.s3_bucket)
