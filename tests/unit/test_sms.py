"""TwilioSmsAdapter: Twilio's signature (test vector, ports, proxies), real captures, statuses.

channel_config is in test_channel_config.py.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest

from ingest.errors import Unauthorized, UnprocessablePayload
from ingest.events import Attachment, MessageEvent, Sender, StatusEvent, make_event_id
from ingest.transports.base import ParseContext, RawRequest, WebhookResult
from ingest.transports.sms import TWIML_EMPTY, TwilioSmsAdapter, compute_signature
from tests.unit.adapters import (
    RECEIVED_AT,
    EventT,
    captured,
    channel,
    context,
    envelope,
    only_event,
    post,
)

CHANNEL_ID = uuid.UUID("3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f")
TOKEN = "0123456789abcdef0123456789abcdef"  # a test Auth Token (the captures' real one is unknown)
URL = "https://crm.example.com/webhooks/sms/3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f"
FORM = "application/x-www-form-urlencoded"

adapter = TwilioSmsAdapter(default_region="US")


def make_ctx(config: dict[str, Any] | None = None) -> ParseContext:
    return context(channel("sms", CHANNEL_ID, {"auth_token": TOKEN} if config is None else config))


def raw(name: str) -> bytes:
    return captured("sms", f"{name}.form")


def sign(body: bytes, url: str = URL, token: str = TOKEN) -> str:
    params = parse_qsl(body.decode(), keep_blank_values=True)
    return compute_signature(token, url, params)


def make_request(
    body: bytes,
    *,
    signature: str | None = None,
    url: str = URL,
    signed_url: str | None = None,
    content_type: str | None = FORM,
    headers: dict[str, str] | None = None,
) -> RawRequest:
    signed = signature if signature is not None else sign(body, signed_url or url)
    return post(
        url, body, {**(headers or {}), "content-type": content_type, "x-twilio-signature": signed}
    )


def handle(body: bytes, config: dict[str, Any] | None = None, **kwargs: Any) -> WebhookResult:
    return adapter.handle(make_request(body, **kwargs), make_ctx(config))


def one(body: bytes, kind: type[EventT] = MessageEvent, **kwargs: Any) -> EventT:
    """The one event of an accepted request, answered as Twilio expects (empty TwiML)."""
    result = handle(body, **kwargs)
    assert result.body == TWIML_EMPTY
    assert result.media_type == "application/xml"
    return only_event(result, kind)


def form(**fields: str) -> bytes:
    return urlencode(fields).encode()


def phone_sender(number: str, first_name: str | None = None) -> Sender:
    """A sender known by phone number (named by it unless a WhatsApp profile names them)."""
    return Sender(
        contact_type="phone",
        contact_value=number,
        first_name=first_name or number,
        phone_e164=number,
        name_is_placeholder=first_name is None,
    )


# --- signature ----------------------------------------------------------------------------------


# twilio-python tests/unit/test_request_validator.py: token, URL, parameters and signature.
VECTOR_TOKEN = "12345"
VECTOR_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
VECTOR_PARAMS = [
    ("CallSid", "CA1234567890ABCDE"),
    ("Digits", "1234"),
    ("From", "+14158675309"),
    ("To", "+18005551212"),
    ("Caller", "+14158675309"),
]


def test_twilio_published_test_vector() -> None:
    signature = compute_signature(VECTOR_TOKEN, VECTOR_URL, VECTOR_PARAMS)
    assert signature == "RSOYDt4T1cUTdK1PDd93/VVr8B8="


def test_test_vector_through_the_adapter() -> None:
    body = urlencode([*VECTOR_PARAMS, ("MessageSid", "SM" + "0" * 32)]).encode()
    signature = sign(body, VECTOR_URL, VECTOR_TOKEN)
    result = handle(body, {"auth_token": VECTOR_TOKEN}, url=VECTOR_URL, signature=signature)
    assert len(result.events) == 1


def test_multi_valued_params_are_sorted_by_value() -> None:
    a = compute_signature(TOKEN, URL, [("X", "b"), ("X", "a"), ("A", "z")])
    b = compute_signature(TOKEN, URL, [("A", "z"), ("X", "a"), ("X", "b")])
    assert a == b
    assert a != compute_signature(TOKEN, URL, [("X", "a"), ("A", "z")])


@pytest.mark.parametrize(
    ("request_url", "signed_url"),
    [
        ("https://crm.example.com/hook?x=1", "https://crm.example.com:443/hook?x=1"),
        ("https://crm.example.com:443/hook?x=1", "https://crm.example.com/hook?x=1"),
        ("http://crm.example.com/hook", "http://crm.example.com:80/hook"),
        ("http://crm.example.com:8080/hook", "http://crm.example.com/hook"),
        ("https://crm.example.com/hook", "https://crm.example.com/hook"),
    ],
)
def test_signature_with_or_without_the_port(request_url: str, signed_url: str) -> None:
    assert len(handle(raw("basic_text"), url=request_url, signed_url=signed_url).events) == 1


def test_another_port_is_not_accepted() -> None:
    with pytest.raises(Unauthorized):
        handle(raw("basic_text"), url=URL, signed_url=URL.replace(".com/", ".com:8443/"))


def test_public_url_is_what_is_signed_behind_a_proxy() -> None:
    public = "https://public.example.com/twilio/sms"
    config = {"auth_token": TOKEN, "public_url": public}
    internal = "http://10.0.0.5:8000/webhooks/sms/x"
    assert len(handle(raw("basic_text"), config, url=internal, signed_url=public).events) == 1
    with pytest.raises(Unauthorized):  # the internal URL no longer counts
        handle(raw("basic_text"), config, url=internal, signed_url=internal)


def test_the_query_string_is_part_of_the_signed_url() -> None:
    with pytest.raises(Unauthorized):
        handle(raw("basic_text"), url=URL + "?a=1", signed_url=URL)


def test_missing_signature_is_unauthorized_before_anything_else() -> None:
    request = RawRequest(
        method="POST", url=URL, headers={"content-type": "text/plain"}, body=b"\xff\xfe"
    )
    with pytest.raises(Unauthorized, match="missing X-Twilio-Signature") as info:
        adapter.handle(request, make_ctx())
    assert info.value.status_code == 401


@pytest.mark.parametrize("signature", ["", "RSOYDt4T1cUTdK1PDd93/VVr8B8=", "not base64 ü"])
def test_wrong_signature_is_unauthorized(signature: str) -> None:
    with pytest.raises(Unauthorized, match="invalid signature"):
        handle(raw("basic_text"), signature=signature)


def test_signature_made_with_another_token_is_unauthorized() -> None:
    body = raw("basic_text")
    with pytest.raises(Unauthorized):
        handle(body, signature=sign(body, token="another-token"))


def test_tampered_body_is_unauthorized() -> None:
    body = raw("basic_text")
    signature = sign(body)
    tampered = body.replace(b"Body=Text+12", b"Body=Text+13")
    with pytest.raises(Unauthorized):
        handle(tampered, signature=signature)
    added = body + b"&NumMedia=1"  # a repeated field changes the signed string too
    with pytest.raises(Unauthorized):
        handle(added, signature=signature)


@pytest.mark.parametrize("config", [{}, {"auth_token": ""}, {"auth_token": 5}])
def test_channel_without_a_token_accepts_nobody(config: dict[str, Any]) -> None:
    with pytest.raises(Unauthorized):
        handle(raw("basic_text"), config, signature=sign(raw("basic_text"), token=""))


@pytest.mark.parametrize("content_type", [None, "application/json", "multipart/form-data"])
def test_wrong_content_type_cannot_be_verified(content_type: str | None) -> None:
    # The signature covers form parameters: another body cannot be verified, so it is refused
    # as unauthenticated (401), never kept.
    with pytest.raises(Unauthorized, match="only application/x-www-form-urlencoded"):
        handle(raw("basic_text"), content_type=content_type)


def test_content_type_parameters_are_allowed() -> None:
    assert len(handle(raw("basic_text"), content_type=FORM + "; charset=utf-8").events) == 1


def test_undecodable_body_cannot_be_verified() -> None:
    with pytest.raises(Unauthorized, match="UTF-8"):
        handle(b"Body=\xff\xfe", signature="x")


# --- inbound messages ---------------------------------------------------------------------------


def test_basic_text_real_capture() -> None:
    event = one(raw("basic_text"), headers={"i-twilio-idempotency-token": "4160eb88"})
    sid = "SM50593ec6f8a4a96563d9d6817a90c42f"
    assert event == MessageEvent(
        **envelope("sms", CHANNEL_ID, "+18017916516", sid),
        event_type="message.received",
        external_message_id=sid,
        version=0,
        sent_at=RECEIVED_AT,
        sender=phone_sender("+18017916516"),
        text="Text 12 12:20pm",
        member_meta={
            "phone": "+18017916516",
            "raw_from": "+18017916516",
            "to": "+18446151430",
            "account_sid": "ACb2722d11b73d22b594c81d79aed6b8d2",
            "messaging_service_sid": "MGb408fe4a968875dffe0b800d08cd6378",
        },
        message_meta={
            "from_city": "OGDEN",
            "from_state": "UT",
            "from_country": "US",
            "from_zip": "84050",
            "num_segments": 1,
            "idempotency_token": "4160eb88",
        },
    )


def test_mms_with_one_image_real_capture() -> None:
    event = one(raw("mms_single_image"))
    assert event.external_message_id == "MM3934ada51e7a20b35b4dd6c7635a29d2"
    assert event.text == ""
    assert event.attachments == [
        Attachment(
            kind="media",
            provider_ref="https://api.twilio.com/2010-04-01/Accounts/ACb2722d11b73d22b594c81d79aed6b8d2"
            "/Messages/MM3934ada51e7a20b35b4dd6c7635a29d2/Media/MEff408942d874d4301caea243989659ea",
            mime_type="image/jpeg",
        )
    ]
    assert "attachment_errors" not in event.message_meta


def test_whatsapp_over_twilio() -> None:
    body = raw("whatsapp_location") + b"&ProfileName=Jane+Doe&WaId=12345678900"
    event = one(body)
    assert event.sender == phone_sender("+12345678900", "Jane Doe")
    assert event.member_meta["channel"] == "whatsapp"
    assert event.member_meta["raw_from"] == "whatsapp:+12345678900"
    assert event.member_meta["wa_id"] == "12345678900"
    assert event.message_meta["location"] == {
        "latitude": 37.7879277,
        "longitude": -122.3937508,
        "address": "375 Beale St, San Francisco, CA 94105",
        "label": "Twilio Inc",
    }


def test_unparseable_from_is_kept_raw() -> None:
    event = one(form(MessageSid="SM1", From="shortcode 12", Body="hi"))
    assert event.sender.contact_value == "shortcode 12"
    assert event.sender.phone_e164 is None
    assert "phone" not in event.member_meta


def test_national_number_uses_the_default_region() -> None:
    event = one(form(MessageSid="SM1", From="(415) 867-5309"))
    assert event.sender.contact_value == "+14158675309"


@pytest.mark.parametrize(
    ("fields", "errors", "kept"),
    [
        ({"NumMedia": "2", "MediaUrl0": "https://m/0"}, ["MediaUrl1: missing"], 1),
        ({"NumMedia": "two", "MediaUrl1": "https://m/1"}, ["NumMedia: not an integer: 'two'"], 1),
        ({"NumMedia": "9" * 5000}, ["NumMedia: not an integer"], 0),
        ({"NumMedia": "11", "MediaUrl10": "https://m/10"}, ["NumMedia: 11 is more than 10"], 0),
    ],
)
def test_odd_media_fields_keep_the_message(
    fields: dict[str, str], errors: list[str], kept: int
) -> None:
    event = one(form(MessageSid="SM1", From="+18017916516", Body="x", **fields))
    assert len(event.attachments) == kept
    assert len(event.message_meta["attachment_errors"]) >= len(errors)
    for got, want in zip(event.message_meta["attachment_errors"], errors, strict=False):
        assert got.startswith(want)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"From": "+18017916516"}, "missing MessageSid"),
        ({"MessageSid": "SM1"}, "missing From"),
        ({"MessageSid": " ", "From": "+1801"}, "missing MessageSid"),
        ({"MessageSid": "S" * 600, "From": "+18017916516"}, "MessageSid is too long"),
        ({"MessageSid": "SM1", "From": "x" * 300}, "From is too long"),
    ],
)
def test_unusable_inbound_is_unprocessable(fields: dict[str, str], reason: str) -> None:
    with pytest.raises(UnprocessablePayload) as info:
        handle(form(**fields))
    assert info.value.status_code == 422
    assert info.value.reason == reason


def test_bare_whatsapp_prefix_is_kept_raw() -> None:
    event = one(form(MessageSid="SM1", From="whatsapp:"))
    assert event.sender.contact_value == "whatsapp:"


def test_same_delivery_gives_the_same_event_id() -> None:
    assert one(raw("basic_text")).event_id == one(raw("basic_text")).event_id


# --- status callbacks ---------------------------------------------------------------------------


def test_delivered_status_callback() -> None:
    event = one(raw("status_delivered"), StatusEvent)
    sid = "SM50593ec6f8a4a96563d9d6817a90c42f"
    # The customer is the `To` of an outbound message: same key as their inbound messages.
    assert event.conversation_key == one(raw("basic_text")).conversation_key
    assert event == StatusEvent(
        **envelope("sms", CHANNEL_ID, "+18017916516", sid, "delivered"),
        event_type="message.status",
        external_message_id=sid,
        status="delivered",
        status_at=RECEIVED_AT,
        meta={"provider_status": "delivered", "to": "+18017916516"},
    )


def test_undelivered_maps_to_failed_with_the_error() -> None:
    event = one(raw("status_undelivered"), StatusEvent)
    assert event.status == "failed"
    assert event.meta == {
        "provider_status": "undelivered",
        "error_code": "30003",
        "to": "+18017916516",
    }


@pytest.mark.parametrize(
    ("twilio", "ours"), [("sent", "sent"), ("read", "read"), ("failed", "failed")]
)
def test_status_mapping(twilio: str, ours: str) -> None:
    body = raw("status_delivered").replace(b"=delivered", b"=" + twilio.encode())
    event = one(body, StatusEvent)
    assert event.status == ours
    assert event.event_id == make_event_id(CHANNEL_ID, "sms", event.external_message_id, ours)


@pytest.mark.parametrize(
    "status", ["queued", "accepted", "sending", "scheduled", "canceled", "receiving", "bogus"]
)
def test_intermediate_statuses_are_ignored(status: str) -> None:
    body = raw("status_delivered").replace(b"=delivered", b"=" + status.encode())
    result = handle(body)
    assert result.events == []
    assert result.ignored is not None
    assert status in result.ignored
    assert result.body == TWIML_EMPTY


def test_status_without_to_is_unprocessable() -> None:
    with pytest.raises(UnprocessablePayload, match="missing To"):
        handle(form(MessageSid="SM1", MessageStatus="delivered"))


def test_sms_status_received_means_inbound_even_with_message_status() -> None:
    body = raw("basic_text") + b"&MessageStatus=received"
    assert one(body).event_type == "message.received"
