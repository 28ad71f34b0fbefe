"""The provider fakes keep the providers' documented habits (provider-apis.md §5) that the
media tests do not already exercise through the product."""

from __future__ import annotations

import httpx
import pytest

from ingest.config import load_settings
from tests.fakes.fixtures import as_env
from tests.fakes.telegram import TelegramFake
from tests.fakes.twilio import TwilioFake
from tests.fakes.whatsapp import WhatsAppFake

TOKEN = "7000000001:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"


@pytest.mark.parametrize(
    "how",
    [
        {"params": {"file_id": "F"}},
        {"json": {"file_id": "F"}},
        {"data": {"file_id": "F"}},
    ],
    ids=["query", "json", "form"],
)
def test_telegram_getfile_takes_its_parameter_any_way_and_any_case(
    telegram_api: TelegramFake, how: dict[str, dict[str, str]]
) -> None:
    telegram_api.add_bot(TOKEN)
    telegram_api.add_file("F", b"bytes")
    method = "GET" if "params" in how else "POST"
    answer = httpx.request(method, f"{telegram_api.url}/bot{TOKEN}/gEtFiLe", **how).json()  # type: ignore[arg-type]
    assert answer["ok"] is True
    assert answer["result"]["file_size"] == 5


def test_whatsapp_media_host_wants_a_user_agent(whatsapp_api: WhatsAppFake) -> None:
    whatsapp_api.add_token("T")
    whatsapp_api.add_media("1", b"bytes")
    auth = {"authorization": "Bearer T"}
    url = httpx.get(f"{whatsapp_api.graph_url}/1", headers=auth).json()["url"]
    with httpx.Client(headers={"user-agent": ""}) as client:
        assert client.get(url, headers=auth).status_code == 400
    assert httpx.get(url, headers=auth).content == b"bytes"


def test_twilio_media_json_is_the_media_resource(twilio_api: TwilioFake) -> None:
    twilio_api.add_account("AC1", "token")
    url = twilio_api.add_media("AC1", "MM1", "ME1", b"x", content_type="image/gif")
    resource = httpx.get(url + ".json", auth=("AC1", "token")).json()
    assert resource["content_type"] == "image/gif"
    assert resource["parent_sid"] == "MM1"
    assert httpx.get(url, auth=("AC1", "wrong")).json()["code"] == 20003


def test_provider_settings_as_a_process_environment_load_as_the_same_settings(
    provider_settings: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in as_env(provider_settings).items():
        monkeypatch.setenv(name, value)
    assert load_settings().model_dump(include=set(provider_settings)) == provider_settings
