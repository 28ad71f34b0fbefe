"""CRM_INGEST_MEDIA_STORE / CRM_INGEST_MEDIA_MAX_BYTES: accepted forms and the one-line error."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from ingest.config import SettingsError, load_settings
from ingest.dev import with_media_store
from ingest.objectstore import parse_store_url


@pytest.mark.parametrize(
    ("url", "scheme", "root", "prefix"),
    [
        ("file:///var/lib/crm-ingest/media", "file", "/var/lib/crm-ingest/media", ""),
        ("file:///var/media/", "file", "/var/media", ""),
        ("file://localhost/srv/m", "file", "/srv/m", ""),
        ("s3://crm-media", "s3", "crm-media", ""),
        ("s3://crm-media/", "s3", "crm-media", ""),
        ("s3://crm.media-1/prod/media/", "s3", "crm.media-1", "prod/media/"),
    ],
)
def test_store_urls_accepted(url: str, scheme: str, root: str, prefix: str) -> None:
    location = parse_store_url(url)
    assert (location.scheme, location.root, location.prefix) == (scheme, root, prefix)
    assert load_settings(media_store=url).media_store == url


@pytest.mark.parametrize(
    "url",
    [
        "/var/media",  # a bare path: which scheme was meant is not ours to guess
        "file://var/media",  # "var" would be a host
        "file:///var/../etc",
        "s3://",
        "s3://Upper-Case",
        "s3://ab",
        "s3://bucket/a//b",
        "s3://bucket/p?versionId=1",
        "gs://bucket",
        "https://s3.amazonaws.com/bucket",
    ],
)
def test_bad_store_url_is_one_line_naming_the_variable(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRM_INGEST_MEDIA_STORE", url)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith("invalid setting CRM_INGEST_MEDIA_STORE: ")
    assert "\n" not in message
    assert "Value error" not in message
    assert message.endswith(f"got {url!r}")  # names what to fix


def test_media_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRM_INGEST_MEDIA_STORE", raising=False)
    monkeypatch.delenv("CRM_INGEST_MEDIA_MAX_BYTES", raising=False)
    settings = load_settings()
    assert (settings.media_store, settings.media_max_bytes) == ("", 104_857_600)
    monkeypatch.setenv("CRM_INGEST_MEDIA_MAX_BYTES", "0")
    with pytest.raises(SettingsError, match=r"^invalid setting CRM_INGEST_MEDIA_MAX_BYTES: "):
        load_settings()


def test_file_url_is_percent_encoded_like_path_as_uri() -> None:
    path = PurePosixPath("/srv/crm ingest/média#1")
    location = parse_store_url(path.as_uri())
    assert location.root == str(path)
    assert location.url == path.as_uri()


def test_dev_defaults_the_store_to_its_data_dir(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "state dir", media_store="")
    assert with_media_store(settings).media_store == (tmp_path / "state dir" / "media").as_uri()
    given = load_settings(data_dir=tmp_path, media_store="s3://bucket/media")
    assert with_media_store(given).media_store == "s3://bucket/media"
