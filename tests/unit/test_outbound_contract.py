"""The message.send command contract and the template renderer."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from handlers.outbound.plan import provider_reply_id, reply_refs
from handlers.outbound.render import MissingParameters, render
from ingest.events import SendCommand, command_key, decode_command, encode_command

TENANT = uuid.UUID("11111111-1111-4111-8111-111111111111")
CONTRACT_EXAMPLE = (
    b'{"schema_version": 1, "type": "message.send", "command_id": '
    b'"5f0c6c2e-7d8a-4a51-9d0e-2f4b1f3a9c11", "tenant_id": "11111111-1111-4111-8111-111111111111",'
    b' "chat_id": 42, "user_id": 7, "text": "Your order has shipped", "template_id": null,'
    b' "template_params": {}, "whatsapp_template": null, "attachments": [], "channel_id": null,'
    b' "reply_to_message_id": null}'
)


def command(**fields: object) -> SendCommand:
    base: dict[str, object] = {"command_id": uuid.uuid4(), "tenant_id": TENANT, "chat_id": 42}
    return SendCommand.model_validate(base | fields)


def test_the_contracts_example_is_a_command() -> None:
    parsed = decode_command(CONTRACT_EXAMPLE)
    assert parsed.text == "Your order has shipped"
    assert parsed.user_id == 7
    assert command_key(parsed) == f"{TENANT}:42"
    assert decode_command(encode_command(parsed)) == parsed


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"text": "hi", "template_id": 3},
        {"text": "hi", "whatsapp_template": {"name": "n", "language": "en_US"}},
        {"template_id": 3, "whatsapp_template": {"name": "n", "language": "en_US"}},
    ],
)
def test_exactly_one_content(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError, match="exactly one of text, template_id"):
        command(**fields)


def test_empty_text_needs_attachments() -> None:
    with pytest.raises(ValidationError, match="no attachments"):
        command(text="  ")
    assert command(text="", attachments=[5]).attachments == [5]


def test_unknown_version_and_type_are_refused() -> None:
    with pytest.raises(ValidationError):
        command(text="hi", schema_version=2)
    with pytest.raises(ValidationError):
        command(text="hi", type="message.delete")


def test_whatsapp_template_language_is_a_locale() -> None:
    ok = command(whatsapp_template={"name": "order", "language": "en_US", "parameters": ["A"]})
    assert ok.whatsapp_template is not None
    assert ok.whatsapp_template.parameters == ["A"]
    with pytest.raises(ValidationError):
        command(whatsapp_template={"name": "order", "language": "en US"})


def test_render_fills_placeholders() -> None:
    assert render("Hi {{name}}, order {{ order }}.", {"name": "Ann", "order": "7"}) == (
        "Hi Ann, order 7."
    )


def test_render_names_every_missing_parameter() -> None:
    with pytest.raises(MissingParameters) as caught:
        render("{{a}} {{b}} {{c}}", {"b": "x"})
    assert caught.value.names == ["a", "c"]
    assert str(caught.value) == "template parameter missing: a, c"


def test_a_value_cannot_add_placeholders() -> None:
    # One pass: a value that looks like a placeholder stays text, never filled.
    out = render("{{a}} and {{b}}", {"a": "{{b}}", "b": "<b>{{a}}</b>"})
    assert out == "{{b}} and <b>{{a}}</b>"


@given(st.dictionaries(st.from_regex(r"[a-z]{1,5}", fullmatch=True), st.text(), min_size=1))
def test_values_are_inserted_literally(params: dict[str, str]) -> None:
    template = " | ".join(f"{{{{{name}}}}}" for name in params)
    assert render(template, params) == " | ".join(params.values())


def test_reply_refs_match_the_inbound_adapters_ids() -> None:
    assert reply_refs("telegram", "-100", ("5", "-100:6")) == ["-100:5", "-100:6"]
    assert reply_refs("email", "a@b.c", ("<x@y>",)) == ["x@y"]
    assert reply_refs("whatsapp", "15550001", ("wamid.A",)) == ["wamid.A"]
    assert provider_reply_id("telegram", "-100:5") == "5"
    assert provider_reply_id("whatsapp", "wamid.A") == "wamid.A"


SEND = ["outbound", "send", "--chat", "42", "--user", "7"]


def test_outbound_send_arguments_become_one_command() -> None:
    from ingest.cli import build_parser
    from ingest.cli_outbound import build_command

    args = build_parser().parse_args(
        [*SEND, "--template", "3", "--param", "name=Ann", "--param", "order=a=b"]
    )
    command = build_command(TENANT, args)
    assert (command.chat_id, command.user_id, command.template_id) == (42, 7, 3)
    assert command.template_params == {"name": "Ann", "order": "a=b"}
    assert command_key(command) == f"{TENANT}:42"


def test_outbound_send_mistakes_are_one_line_naming_what_to_fix() -> None:
    from ingest.cli import build_parser
    from ingest.cli_base import CliError
    from ingest.cli_outbound import build_command

    parse = build_parser().parse_args
    with pytest.raises(CliError, match="--param expects KEY=VALUE"):
        build_command(TENANT, parse([*SEND, "--template", "3", "--param", "name"]))
    with pytest.raises(CliError, match="text is empty"):
        build_command(TENANT, parse([*SEND, "--text", " "]))
    with pytest.raises(SystemExit):  # argparse: --text and --template exclude each other
        parse([*SEND, "--text", "a", "--template", "3"])
