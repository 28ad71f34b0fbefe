"""How the S3 backend's one translation boundary classifies what S3 and the network answer.

The integration tests reach refused connections, a stopped server, missing buckets and keys for
real; throttling and 5xx answers are not something moto can be made to give, so their
classification is pinned here with the exceptions botocore raises for them.
"""

from __future__ import annotations

import aiohttp
import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from ingest.objectstore import ObjectNotFound, StoreError, StoreUnavailable
from ingest.objectstore.s3 import _translated


def s3_error(status: int, code: str) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "..."}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutObject",
    )


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (s3_error(503, "SlowDown"), StoreUnavailable),
        (s3_error(500, "InternalError"), StoreUnavailable),
        (s3_error(502, ""), StoreUnavailable),
        (s3_error(429, "TooManyRequests"), StoreUnavailable),
        (s3_error(400, "RequestTimeout"), StoreUnavailable),
        (s3_error(403, "AccessDenied"), StoreUnavailable),
        (s3_error(403, "InvalidAccessKeyId"), StoreUnavailable),
        (s3_error(404, "NoSuchBucket"), StoreUnavailable),
        (s3_error(404, "NoSuchKey"), ObjectNotFound),
        (s3_error(404, "404"), ObjectNotFound),
        (s3_error(400, "InvalidArgument"), StoreError),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), StoreUnavailable),
        (ConnectTimeoutError(endpoint_url="http://s3"), StoreUnavailable),
        (ReadTimeoutError(endpoint_url="http://s3"), StoreUnavailable),
        (NoCredentialsError(), StoreUnavailable),
        (aiohttp.ServerDisconnectedError(), StoreUnavailable),
        (TimeoutError(), StoreUnavailable),
        (ConnectionResetError(), StoreUnavailable),
    ],
)
async def test_classification(raised: Exception, expected: type[StoreError]) -> None:
    with pytest.raises(StoreError) as caught:
        async with _translated("put k"):
            raise raised
    assert type(caught.value) is expected
    assert caught.value.__cause__ is raised
    assert str(caught.value).startswith("put k: ")


async def test_other_errors_pass_through() -> None:
    with pytest.raises(KeyError):
        async with _translated("put k"):
            raise KeyError("a bug of ours is not the store's fault")
