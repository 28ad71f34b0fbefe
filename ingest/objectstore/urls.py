"""Parsing of `CRM_INGEST_MEDIA_STORE` and of object keys: pure, no I/O, no store library.

`ingest.config` validates the setting with `parse_store_url`, so it lives apart from the
backends (importing it must not import boto or obstore).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal
from urllib.parse import quote, unquote, urlsplit

from ingest.objectstore.errors import ObjectNotFound

# S3's "safe characters" (AWS, "Creating object key names") plus "/" between segments: such a
# key needs no escaping in a file path, an s3:// URL or a request, so `url(key)` is the key
# verbatim. Callers keep user-supplied file names in the database, never in keys.
_SEGMENT = re.compile(r"^[A-Za-z0-9!_*'()=-][A-Za-z0-9!_.*'()=-]*$")
MAX_KEY_BYTES = 1024  # S3's limit, prefix included
# Bucket names as S3 allows them (3-63 of a-z 0-9 . -, starting and ending alphanumeric).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True, slots=True)
class StoreLocation:
    """Where objects live: a directory (`file`) or a bucket plus key prefix (`s3`)."""

    scheme: Literal["file", "s3"]
    root: str  # file: the absolute directory; s3: the bucket
    prefix: str = ""  # s3 only: "" or "a/b/" (always ends with "/")

    @property
    def url(self) -> str:
        if self.scheme == "file":
            return f"file://{quote(self.root)}"  # as Path.as_uri() writes it
        return f"s3://{self.root}/{self.prefix}".rstrip("/")


def parse_store_url(url: str) -> StoreLocation:
    """`file:///abs/dir` or `s3://bucket[/prefix]`; ValueError says what is wrong."""
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise ValueError(f"expected file:///abs/dir or s3://bucket[/prefix], got {url!r}")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file URL needs an absolute path (file:///abs/dir), got {url!r}")
        path = PurePosixPath(unquote(parts.path))
        if not parts.path.startswith("/") or any(p in (".", "..") for p in path.parts):
            raise ValueError(f"file URL needs an absolute path (file:///abs/dir), got {url!r}")
        root = str(path)
        return StoreLocation("file", root if root == "/" else root.rstrip("/"))
    if parts.scheme == "s3":
        bucket = parts.netloc
        if not _BUCKET.match(bucket) or ".." in bucket:
            raise ValueError(f"s3 URL needs a valid bucket name (s3://bucket/prefix), got {url!r}")
        prefix = parts.path.strip("/")
        if prefix:
            try:
                validate_key(prefix)
            except ValueError as exc:
                raise ValueError(f"s3 URL prefix: {exc}, got {url!r}") from exc
            prefix += "/"
        return StoreLocation("s3", bucket, prefix)
    raise ValueError(f"expected file:///abs/dir or s3://bucket[/prefix], got {url!r}")


def validate_key(key: str) -> str:
    """The key itself when it is safe everywhere; ValueError (a caller's bug) otherwise."""
    if not key or len(key.encode()) > MAX_KEY_BYTES:
        raise ValueError(f"object key must be 1-{MAX_KEY_BYTES} bytes")
    for segment in key.split("/"):
        if not _SEGMENT.match(segment):
            raise ValueError(
                f"object key {key!r}: segments are non-empty, of A-Z a-z 0-9 ! _ . * ' ( ) = -,"
                " and do not start with '.'"
            )
    return key


def key_of(key_or_url: str, base_url: str) -> str:
    """The key named by a key or by an object URL of the store at `base_url`.

    A URL of another store raises ObjectNotFound: it names nothing this store holds.
    """
    if "://" not in key_or_url:
        return validate_key(key_or_url)
    if not key_or_url.startswith(base_url + "/"):
        raise ObjectNotFound("the URL is not in this store")
    return validate_key(key_or_url[len(base_url) + 1 :])


def content_addressed_key(sha256_hex: str, prefix: str = "") -> str:
    """`<prefix>/sha256/ab/cd/<hex>`: equal bytes share one key, so a retry never adds one."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256_hex):
        raise ValueError("sha256_hex must be 64 lower-case hex digits")
    fanned = f"sha256/{sha256_hex[:2]}/{sha256_hex[2:4]}/{sha256_hex}"
    return validate_key(f"{prefix.strip('/')}/{fanned}" if prefix.strip("/") else fanned)
