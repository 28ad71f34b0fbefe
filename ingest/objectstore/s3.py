"""`s3://bucket/prefix`: any S3-compatible store (AWS, MinIO, Ceph, R2), through aiobotocore.

Credentials, region and endpoint come from the standard AWS variables (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`), so the usual AWS chain (profiles,
instance roles, web identity) works too. An object smaller than one part is one PutObject; a
larger one is a multipart upload, which S3 makes visible only on CompleteMultipartUpload, so a
key never shows part of an object. A put that fails, is too large or is cancelled aborts its
upload. Library errors become `StoreError`s in `_translated`, the one boundary.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from ingest.logs import get_logger
from ingest.objectstore.base import Meter, StoredObject, UrlKeyedStore, rechunk
from ingest.objectstore.errors import ObjectNotFound, StoreError, StoreUnavailable
from ingest.objectstore.urls import StoreLocation, key_of, validate_key

log = get_logger("crm_ingest.objectstore")

# S3's smallest part (except the last). Memory per put is about two parts, and the media
# worker runs several puts at once, so the smallest part is the right one (README, Media).
PART_BYTES = 5 * 1024 * 1024
READ_BYTES = 1024 * 1024

_NOT_FOUND = {"NoSuchKey", "NotFound", "404"}
# Worth retrying: the store is busy, restarting, or misconfigured in a way an operator fixes
# (credentials, bucket) without the job being wrong.
_UNAVAILABLE = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "ServiceUnavailable",
    "InternalError",
    "NoSuchBucket",
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "XMinioServerNotInitialized",
}


class S3Store(UrlKeyedStore):
    def __init__(self, location: StoreLocation) -> None:
        self.bucket = location.root
        self.prefix = location.prefix
        super().__init__(location.url)
        self._client: Any = None
        self._exit = AsyncExitStack()
        self._opening = asyncio.Lock()

    async def _s3(self) -> Any:
        """The client, created on first use (inside the running loop, as aiohttp wants)."""
        async with self._opening:
            if self._client is None:
                endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
                    "AWS_ENDPOINT_URL"
                )
                config = AioConfig(
                    # One quick retry here; callers retry with their own backoff (the media
                    # worker) or answer 503 within the provider's patience (the gateway).
                    connect_timeout=2,
                    read_timeout=20,
                    retries={"mode": "standard", "total_max_attempts": 2},
                    # MinIO, Ceph and R2 answer path-style requests everywhere; AWS itself
                    # (no endpoint set) gets its preferred virtual-hosted style.
                    s3={"addressing_style": "path" if endpoint else "auto"},
                    # Checksums only where S3 requires them: several S3-compatible stores
                    # refuse botocore's newer default trailers. The sha256 is ours anyway.
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                )
                region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                client = get_session().create_client("s3", region_name=region, config=config)
                async with _translated("connect"):
                    self._client = await self._exit.enter_async_context(client)
            return self._client

    def _object_key(self, key: str) -> str:
        return self.prefix + key

    async def put(
        self,
        key: str,
        chunks: AsyncIterable[bytes],
        *,
        content_type: str | None,
        max_bytes: int,
    ) -> StoredObject:
        target = {"Bucket": self.bucket, "Key": self._object_key(validate_key(key))}
        extra = {"ContentType": content_type} if content_type else {}
        meter = Meter(max_bytes)
        s3 = await self._s3()
        pieces = rechunk(chunks, meter, PART_BYTES)
        first = await anext(pieces, b"")
        if len(first) < PART_BYTES:  # the whole object: one request
            async with _translated(f"put {key}"):
                await s3.put_object(**target, Body=first, **extra)
        else:
            async with _translated(f"put {key}"):
                upload = await s3.create_multipart_upload(**target, **extra)
            upload_id = upload["UploadId"]
            try:
                parts = [await self._part(s3, target, upload_id, 1, first)]
                del first  # hold one part at a time
                async for piece in pieces:
                    parts.append(await self._part(s3, target, upload_id, len(parts) + 1, piece))
                async with _translated(f"put {key}"):
                    await s3.complete_multipart_upload(
                        **target, UploadId=upload_id, MultipartUpload={"Parts": parts}
                    )
            except BaseException:
                # Too large, a failing source, the store, cancellation: the parts go.
                await asyncio.shield(self._abort(s3, target, upload_id))
                raise
        return StoredObject(key, self.url(key), meter.size, meter.sha256, content_type)

    async def _part(
        self, s3: Any, target: dict[str, str], upload_id: str, number: int, body: bytes
    ) -> dict[str, Any]:
        async with _translated(f"put {target['Key']}"):
            answer = await s3.upload_part(
                **target, UploadId=upload_id, PartNumber=number, Body=body
            )
        return {"PartNumber": number, "ETag": answer["ETag"]}

    async def _abort(self, s3: Any, target: dict[str, str], upload_id: str) -> None:
        try:
            async with _translated("abort"):
                await s3.abort_multipart_upload(**target, UploadId=upload_id)
        except StoreError as exc:
            # The store's lifecycle rule for incomplete uploads collects it (README, Media).
            log.warning("multipart upload not aborted", key=target["Key"], reason=str(exc))

    async def get(self, key_or_url: str) -> AsyncIterator[bytes]:
        key = key_of(key_or_url, self._base_url)
        s3 = await self._s3()
        async with _translated(f"get {key}"):
            answer = await s3.get_object(Bucket=self.bucket, Key=self._object_key(key))
        body = answer["Body"]
        try:
            while True:
                async with _translated(f"get {key}"):
                    piece = await body.read(READ_BYTES)
                if not piece:
                    return
                yield piece
        finally:
            body.close()

    async def ping(self) -> bool:
        try:
            s3 = await self._s3()
            async with _translated("ping"):
                await s3.head_bucket(Bucket=self.bucket)
        except StoreError as exc:
            log.warning("object store not ready", store=self._base_url, reason=str(exc))
            return False
        return True

    async def sweep(self, older_than_s: float) -> int:
        """Abort multipart uploads under the prefix started more than `older_than_s` ago:
        those of killed processes (the bucket's lifecycle rule remains the backstop)."""
        s3 = await self._s3()
        before = datetime.now(UTC) - timedelta(seconds=older_than_s)
        stale: list[dict[str, str]] = []
        async with _translated("list uploads"):
            pages = s3.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self.prefix
            )
            async for page in pages:
                stale += [u for u in page.get("Uploads", []) if u["Initiated"] < before]
        for upload in stale:
            target = {"Bucket": self.bucket, "Key": upload["Key"]}
            async with _translated(f"abort {upload['Key']}"):
                await s3.abort_multipart_upload(**target, UploadId=upload["UploadId"])
        return len(stale)

    async def close(self) -> None:
        await self._exit.aclose()
        self._client = None


@asynccontextmanager
async def _translated(what: str) -> AsyncIterator[None]:
    """The one place where botocore's and aiohttp's exceptions become ours."""
    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        reason = f"{what}: {code or status} {error.get('Message', '')}".strip()
        if code in _NOT_FOUND or (status == 404 and code != "NoSuchBucket"):
            raise ObjectNotFound(reason) from exc
        if code in _UNAVAILABLE or status in (403, 429) or status >= 500:
            raise StoreUnavailable(reason) from exc
        raise StoreError(reason) from exc
    except (TimeoutError, BotoCoreError, aiohttp.ClientError, OSError) as exc:
        # Connection refused or reset, timeouts, DNS, no credentials found
        raise StoreUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc
