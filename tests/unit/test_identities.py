"""Which new senders of one batch are one person (and so get one client), how a sender's
second identity (WhatsApp user id) is linked, and which names count as made up."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from handlers.client_changes import name_candidates
from handlers.identities import (
    Conflict,
    IdentityKey,
    _link,
    identity_key,
    is_placeholder,
    linked_key,
    same_person,
)
from ingest.events import MessageEvent, Sender

TENANT = uuid.UUID(int=1)
OTHER_TENANT = uuid.UUID(int=2)


def sender(
    contact_type: str,
    value: str,
    *,
    phone: str | None = None,
    email: str | None = None,
    user_id: str | None = None,
    name: str = "Ann",
    placeholder: bool = False,
) -> Sender:
    return Sender(
        contact_type=contact_type,
        contact_value=value,
        first_name=name,
        phone_e164=phone,
        email=email,
        user_id=user_id,
        name_is_placeholder=placeholder,
    )


def groups(*people: tuple[uuid.UUID, Sender]) -> list[list[IdentityKey]]:
    senders = {identity_key(s, tenant): s for tenant, s in people}
    return same_person(list(senders), senders)


def test_identity_key_is_tenant_type_and_value() -> None:
    whatsapp = sender("whatsapp", "+15550001111", phone="+15550001111")
    assert identity_key(whatsapp, TENANT) == (TENANT, "whatsapp", "+15550001111")


def test_the_same_phone_on_two_transports_is_one_person() -> None:
    whatsapp = sender("whatsapp", "+15550001111", phone="+15550001111")
    sms = sender("phone", "+15550001111", phone="+15550001111")
    assert groups((TENANT, whatsapp), (TENANT, sms)) == [
        [(TENANT, "whatsapp", "+15550001111"), (TENANT, "phone", "+15550001111")]
    ]


def test_emails_match_whatever_their_case() -> None:
    mail = sender("email", "Ann@Example.com", email="Ann@Example.com")
    telegram = sender("telegram", "42", email="ann@example.com")
    assert len(groups((TENANT, mail), (TENANT, telegram))) == 1


def test_a_chain_of_shared_phone_and_email_is_one_person() -> None:
    whatsapp = sender("whatsapp", "+15550001111", phone="+15550001111")
    sms = sender("phone", "+15550001111", phone="+15550001111", email="ann@example.com")
    mail = sender("email", "ann@example.com", email="ann@example.com")
    (group,) = groups((TENANT, whatsapp), (TENANT, sms), (TENANT, mail))
    assert {key[1] for key in group} == {"whatsapp", "phone", "email"}


def test_tenants_never_share_a_person() -> None:
    whatsapp = sender("whatsapp", "+15550001111", phone="+15550001111")
    assert len(groups((TENANT, whatsapp), (OTHER_TENANT, whatsapp))) == 2


def test_senders_without_phone_or_email_stand_alone() -> None:
    first, second = sender("telegram", "41"), sender("telegram", "42")
    assert groups((TENANT, first), (TENANT, second)) == [
        [(TENANT, "telegram", "41")],
        [(TENANT, "telegram", "42")],
    ]


def test_a_user_id_joins_its_phone_in_one_batch() -> None:
    username_only = sender("whatsapp", "US.1", user_id="US.1")
    with_phone = sender("whatsapp", "+15550001111", phone="+15550001111", user_id="US.1")
    assert len(groups((TENANT, username_only), (TENANT, with_phone))) == 1


# --- second identities ------------------------------------------------------------------------

PHONE_KEY: IdentityKey = (TENANT, "whatsapp", "+15550001111")
USER_KEY: IdentityKey = (TENANT, "whatsapp", "US.1")
BOTH = sender("whatsapp", "+15550001111", phone="+15550001111", user_id="US.1")


def link(known: dict[IdentityKey, tuple[int | None, int | None, bool]]) -> tuple[object, ...]:
    senders = {PHONE_KEY: BOTH}
    unclaimed = {PHONE_KEY: known.get(PHONE_KEY, (None, None, False))[:2]}
    if known.get(PHONE_KEY, (0, 0, False))[2]:
        unclaimed = {}
    linked, joins, conflicts = _link({PHONE_KEY: USER_KEY}, known, senders, unclaimed)
    return unclaimed, joins, conflicts, linked


def test_linked_key_is_the_user_id_beside_another_identity() -> None:
    assert linked_key(BOTH, TENANT) == USER_KEY
    assert linked_key(sender("whatsapp", "US.1", user_id="US.1"), TENANT) is None
    assert linked_key(sender("telegram", "42"), TENANT) is None


def test_a_new_phone_joins_the_client_of_its_known_user_id() -> None:
    unclaimed, joins, conflicts, linked = link({USER_KEY: (5, 50, True)})
    assert unclaimed == {PHONE_KEY: (5, None)}  # a new contact on client 5
    assert (joins, conflicts, linked) == ({}, [], {PHONE_KEY})


def test_a_new_user_id_joins_its_known_phone() -> None:
    unclaimed, joins, conflicts, _ = link({PHONE_KEY: (3, 30, True)})
    assert (unclaimed, joins, conflicts) == ({}, {USER_KEY: PHONE_KEY}, [])


def test_both_new_user_id_joins_the_phones_new_client() -> None:
    unclaimed, joins, conflicts, linked = link({})
    assert unclaimed == {PHONE_KEY: (None, None)}
    assert (joins, conflicts, linked) == ({USER_KEY: PHONE_KEY}, [], {PHONE_KEY})


def test_two_clients_are_a_conflict_and_nothing_is_linked() -> None:
    # The phone is known on another channel (client 3, not yet claimed); the user id is 5's.
    unclaimed, joins, conflicts, linked = link(
        {PHONE_KEY: (3, None, False), USER_KEY: (5, 50, True)}
    )
    assert conflicts == [Conflict(PHONE_KEY, "US.1", 3, 5)]
    assert unclaimed == {PHONE_KEY: (3, None)}  # the messages stay with the phone's client
    assert (joins, linked) == ({}, set())


def test_one_client_by_both_is_no_conflict() -> None:
    assert link({PHONE_KEY: (3, 30, True), USER_KEY: (3, 30, True)})[1:3] == ({}, [])


# --- names ------------------------------------------------------------------------------------


def test_names_equal_to_an_identifier_are_placeholders() -> None:
    assert is_placeholder(
        sender("phone", "+15550001111", phone="+15550001111", name="+15550001111")
    )
    assert is_placeholder(sender("whatsapp", "US.1", user_id="US.1", name="US.1"))
    assert is_placeholder(
        sender("email", "a@example.org", email="a@example.org", name="a@example.org")
    )
    assert is_placeholder(sender("telegram", "42", name="Telegram user 42", placeholder=True))
    assert not is_placeholder(sender("whatsapp", "+15550001111", phone="+15550001111"))


def message(client_sender: Sender, version: int) -> MessageEvent:
    return MessageEvent(
        event_id=uuid.uuid4(),
        tenant_id=TENANT,
        channel_id=uuid.UUID(int=9),
        transport="whatsapp",
        conversation_key="k",
        received_at=datetime(2026, 1, 1, tzinfo=UTC),
        event_type="message.received",
        external_message_id=str(version),
        version=version,
        sent_at=datetime(2026, 1, 1, tzinfo=UTC),
        sender=client_sender,
        text="hi",
    )


def test_name_candidates_are_the_newest_real_name_per_client_and_transport() -> None:
    sms = sender("phone", "+15550001111", phone="+15550001111", name="+15550001111")
    old, new = sender("whatsapp", "+1555", name="Bob"), sender("whatsapp", "+1555", name="Bobby")
    telegram = sender("telegram", "42", name="Robert")
    placements = [
        (7, 70, message(sms, 1)),
        (7, 70, message(old, 2)),
        (7, 70, message(telegram, 3)),
        (7, 70, message(new, 4)),
        (8, 80, message(sms, 5)),
    ]
    chosen = name_candidates(placements)
    assert {k: p[2].sender.first_name for k, p in chosen.items()} == {
        (7, "whatsapp"): "Bobby",
        (7, "telegram"): "Robert",
    }
