"""The send fakes' own documented habits (provider-apis.md §5), called directly over HTTP: the
limits and refusals the senders' tests rely on the fakes to enforce."""

from __future__ import annotations

import json

import httpx

from tests.fakes.telegram import TelegramFake
from tests.fakes.twilio import TwilioFake
from tests.fakes.whatsapp import VERSION, WhatsAppFake

TOKEN = "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11"


async def test_telegram_limits_params_and_ids(telegram_api: TelegramFake) -> None:
    telegram_api.add_bot(TOKEN)
    api = f"{telegram_api.url}/bot{TOKEN}"
    async with httpx.AsyncClient() as client:
        too_long = await client.post(f"{api}/sendMessage", json={"chat_id": 5, "text": "x" * 4097})
        assert too_long.status_code == 400
        assert too_long.json()["description"] == "Bad Request: message is too long"
        empty = await client.post(f"{api}/sendMessage", data={"chat_id": "5", "text": " "})
        assert empty.json()["description"] == "Bad Request: message text is empty"
        bad_json = await client.post(
            f"{api}/SENDMESSAGE", data={"chat_id": "5", "text": "a", "reply_parameters": "{"}
        )
        assert bad_json.json()["description"].startswith("Bad Request: can't parse reply")
        legacy = await client.get(
            f"{api}/sendmessage", params={"chat_id": 5, "text": "a", "reply_to_message_id": 3}
        )
        form = await client.post(
            f"{api}/sendMessage",
            data={"chat_id": "5", "text": "b", "reply_parameters": json.dumps({"message_id": 4})},
        )
        other_chat = await client.post(f"{api}/sendMessage", json={"chat_id": 6, "text": "c"})
        caption = await client.post(
            f"{api}/sendPhoto",
            data={"chat_id": "5", "caption": "c" * 1025},
            files={"photo": ("p.jpg", b"jpeg", "image/jpeg")},
        )
        assert caption.json()["description"] == "Bad Request: message caption is too long"
        no_file = await client.post(f"{api}/sendDocument", data={"chat_id": "5"})
        assert no_file.status_code == 400
    assert [r.json()["result"]["message_id"] for r in (legacy, form, other_chat)] == [1, 2, 1]
    assert [m.reply_to_message_id for m in telegram_api.sent] == [3, 4, None]


async def test_whatsapp_validates_sends(whatsapp_api: WhatsAppFake) -> None:
    whatsapp_api.add_token("T")
    whatsapp_api.phone_numbers.add("1")
    url = f"{whatsapp_api.graph_url}/1/messages"
    auth = {"authorization": "Bearer T"}
    text = {"messaging_product": "whatsapp", "to": "+2", "type": "text"}
    async with httpx.AsyncClient() as client:
        no_token = await client.post(url, json=text | {"text": {"body": "a"}})
        assert (no_token.status_code, no_token.json()["error"]["code"]) == (401, 190)
        long = await client.post(url, json=text | {"text": {"body": "x" * 4097}}, headers=auth)
        assert long.json()["error"]["code"] == 100
        product = await client.post(
            url, json=text | {"messaging_product": "x", "text": {"body": "a"}}, headers=auth
        )
        assert product.json()["error"]["code"] == 100
        image = {"messaging_product": "whatsapp", "to": "+2", "type": "image"}
        unknown = await client.post(url, json=image | {"image": {"id": "9"}}, headers=auth)
        assert unknown.json()["error"]["code"] == 131053
        caption = await client.post(
            url,
            json=image | {"image": {"link": "https://x/y.jpg", "caption": "c" * 1025}},
            headers=auth,
        )
        assert caption.json()["error"]["code"] == 100
        other_number = await client.post(
            f"{whatsapp_api.graph_url}/7/messages",
            json=text | {"text": {"body": "a"}},
            headers=auth,
        )
        assert other_number.json()["error"]["code"] == 100
    assert whatsapp_api.sent == []
    assert whatsapp_api.graph_url.endswith(VERSION)


async def test_twilio_validates_messages(twilio_api: TwilioFake) -> None:
    account = "AC" + "1" * 32
    twilio_api.add_account(account, "tok")
    url = f"{twilio_api.api.url}/2010-04-01/Accounts/{account}/Messages.json"
    async with httpx.AsyncClient(auth=(account, "tok")) as client:
        long = await client.post(url, data={"To": "+1", "From": "+2", "Body": "x" * 1601})
        assert long.json()["code"] == 21617
        no_from = await client.post(url, data={"To": "+1", "Body": "a"})
        assert no_from.json()["code"] == 21603
        media = await client.post(
            url, data={"To": "+1", "From": "+2", "MediaUrl": [f"https://m/{n}" for n in range(11)]}
        )
        assert media.json()["code"] == 21623
        created = await client.post(url, data={"To": "+1", "From": "+2", "Body": "a"})
        assert created.status_code == 201
        assert created.json()["sid"].startswith("SM")
    async with httpx.AsyncClient(auth=(account, "wrong")) as client:
        refused = await client.post(url, data={"To": "+1", "From": "+2", "Body": "a"})
        assert (refused.status_code, refused.json()["code"]) == (401, 20003)
    assert len(twilio_api.sent) == 1
