"""A Python client for clinical applications (docs/client.md): ``Client`` (blocking) and
``AsyncClient``, with retries that never duplicate an image, resumable uploads, digest-checked
downloads and one exception class per API error code (``vault.client.errors``)."""

from vault.client.aio import AsyncClient, RetryPolicy
from vault.client.errors import ApiError, DownloadCorrupt, ImagevaultClientError, TransportFailed
from vault.client.sync import Client

__all__ = ["ApiError", "AsyncClient", "Client", "DownloadCorrupt", "ImagevaultClientError", "RetryPolicy", "TransportFailed"]
