"""Which new senders of one batch are one person (and so get one client)."""

from __future__ import annotations

import uuid

from handlers.identities import IdentityKey, identity_key, same_person
from ingest.events import Sender

TENANT = uuid.UUID(int=1)
OTHER_TENANT = uuid.UUID(int=2)


def sender(
    contact_type: str, value: str, *, phone: str | None = None, email: str | None = None
) -> Sender:
    return Sender(
        contact_type=contact_type,
        contact_value=value,
        first_name="Ann",
        phone_e164=phone,
        email=email,
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
