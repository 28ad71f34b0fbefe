"""The bench's deterministic workload: Telegram-shaped events from new and known senders, some
with attachments, some delivered twice, over several tenants; and the gateway phase's bodies."""

from __future__ import annotations

import json
import random
import string
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ingest.admin import webhook_path
from ingest.events import MessageEvent, encode_event, event_headers
from ingest.transports.base import Channel, ParseContext, RawRequest
from ingest.transports.telegram import SECRET_HEADER, TelegramAdapter

NEW_SENDER_SHARE = 0.20
ATTACHMENT_SHARE = 0.10
DUPLICATE_SHARE = 0.05
BASE_DATE = 1_750_000_000  # unix seconds of the first generated message
BASE_USER_ID = 5_000_000_000  # Telegram user ids of the workload's senders
GATEWAY_USER_ID = 7_000_000_000  # ... and of the gateway phase's senders (never overlapping)
GATEWAY_SENDERS = 500

_FIRST = ["Anna", "Ivan", "Olga", "Pedro", "Mei", "Ирина", "Сергей", "Fatima", "Lars", "Aiko"]
_LAST = [None, "Smith", "Kiseleva", "Müller", "García", "Петров", "Tanaka", "Okafor"]
_LANG = [None, "en", "ru", "de", "es", "pt"]
_WORD_TEXT = (
    "hello order delivery price invoice thanks please when where address tomorrow today "
    "payment card refund size color available discount call back number status tracking "
    "привет заказ доставка спасибо оплата"
)
_WORDS = _WORD_TEXT.split()


@dataclass(frozen=True, slots=True)
class BenchChannel:
    tenant_id: uuid.UUID
    channel_id: uuid.UUID
    secret: str

    def as_channel(self) -> Channel:
        return Channel(self.channel_id, self.tenant_id, "telegram", {"secret_token": self.secret})

    @property
    def path(self) -> str:
        return webhook_path("telegram", self.channel_id)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One Kafka record to produce: a duplicate is a second Delivery of the same event."""

    event: int  # index into Workload.events
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Expected:
    """Rows a correct ingestion of (a prefix of) the deliveries leaves behind."""

    deliveries: int
    events: int  # distinct events among them
    senders: int  # = clients = their names = contacts = identities = chats = members
    attachments: int  # = uploads

    def rows(self) -> dict[str, int]:
        s = self.senders
        return {
            "crm_clients": s,
            "ingest_client_names": s,
            "crm_client_contacts": s,
            "ingest_identities": s,
            "crm_chats": s,
            "crm_chat_members": s,
            "crm_chat_messages": self.events,
            "ingest_message_refs": self.events,
            "core_uploads": self.attachments,
            "crm_chat_message_attachments": self.attachments,
            "ingest_media_jobs": self.attachments,  # Telegram files: each one is fetched
        }


@dataclass(slots=True)
class Workload:
    seed: int
    channels: list[BenchChannel]
    events: list[MessageEvent]  # distinct events, in generation (= sent_at) order
    sender_of: list[int]  # events[i] was sent by sender sender_of[i]
    sender_tenant: list[int]  # sender -> index into channels
    deliveries: list[Delivery]  # topic order
    new_senders: int = 0
    with_attachments: int = 0
    duplicates: int = 0
    _prefix_cache: dict[int, Expected] = field(default_factory=dict)

    def expected(self, deliveries: int | None = None) -> Expected:
        """What the first `deliveries` records (all by default) must produce."""
        n = len(self.deliveries) if deliveries is None else deliveries
        if n not in self._prefix_cache:
            seen = {d.event for d in self.deliveries[:n]}
            senders = {self.sender_of[i] for i in seen}
            attachments = sum(len(self.events[i].attachments) for i in seen)
            self._prefix_cache[n] = Expected(n, len(seen), len(senders), attachments)
        return self._prefix_cache[n]


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def _text(rng: random.Random) -> str:
    words = rng.choices(_WORDS, k=rng.randint(2, 28))
    return " ".join(words).capitalize() + rng.choice([".", "?", "!", ""])


def _file_id(rng: random.Random) -> str:
    return "AgAC" + "".join(rng.choices(string.ascii_letters + string.digits + "_-", k=68))


def _media(rng: random.Random) -> dict[str, Any]:
    if rng.random() < 0.6:
        w, h = rng.choice([(1280, 720), (800, 600), (1080, 1920), (640, 640)])
        sizes = [(w // 8, h // 8), (w // 3, h // 3), (w, h)]
        return {
            "photo": [
                {
                    "file_id": _file_id(rng),
                    "file_unique_id": _file_id(rng)[:16],
                    "file_size": sw * sh // 4,
                    "width": sw,
                    "height": sh,
                }
                for sw, sh in sizes
            ]
        }
    name = rng.choice(["invoice.pdf", "photo_2024.jpg", "contract.docx", "price-list.xlsx"])
    return {
        "document": {
            "file_id": _file_id(rng),
            "file_unique_id": _file_id(rng)[:16],
            "file_name": name,
            "mime_type": "application/pdf" if name.endswith(".pdf") else "application/octet-stream",
            "file_size": rng.randint(10_000, 5_000_000),
        }
    }


def telegram_update(
    rng: random.Random,
    *,
    update_id: int,
    user_id: int,
    message_id: int,
    date: int,
    profile: tuple[str, str | None, str | None, str | None],
    attachment: bool,
) -> dict[str, Any]:
    """A private-chat `message` Update as the Bot API sends it."""
    first, last, username, lang = profile
    user: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": first}
    chat: dict[str, Any] = {"id": user_id, "type": "private", "first_name": first}
    for key, value in (("last_name", last), ("username", username)):
        if value is not None:
            user[key] = chat[key] = value
    if lang is not None:
        user["language_code"] = lang
    message: dict[str, Any] = {"message_id": message_id, "from": user, "chat": chat, "date": date}
    if attachment:
        message.update(_media(rng))
        if rng.random() < 0.5:
            message["caption"] = _text(rng)
    else:
        message["text"] = _text(rng)
    return {"update_id": update_id, "message": message}


def _profile(rng: random.Random, sender: int) -> tuple[str, str | None, str | None, str | None]:
    username = f"user_{sender}" if rng.random() < 0.7 else None
    return rng.choice(_FIRST), rng.choice(_LAST), username, rng.choice(_LANG)


def telegram_request(channel: BenchChannel, body: bytes) -> RawRequest:
    return RawRequest(
        method="POST",
        url=f"http://bench.local{channel.path}",
        headers={"content-type": "application/json", SECRET_HEADER.lower(): channel.secret},
        body=body,
    )


def telegram_event(
    adapter: TelegramAdapter,
    channel: BenchChannel,
    update: dict[str, Any],
    received_at: datetime,
    correlation_id: str,
) -> MessageEvent:
    """The event our gateway makes of `update` arriving on `channel`."""
    ctx = ParseContext(
        channel=channel.as_channel(), received_at=received_at, correlation_id=correlation_id
    )
    body = json.dumps(update, separators=(",", ":")).encode()
    (event,) = adapter.handle(telegram_request(channel, body), ctx).events
    assert isinstance(event, MessageEvent)
    return event


def _channels(rng: random.Random, tenants: int) -> list[BenchChannel]:
    return [
        BenchChannel(_uuid(rng), _uuid(rng), "".join(rng.choices(string.ascii_letters, k=40)))
        for _ in range(tenants)
    ]


def generate(events: int, tenants: int, seed: int) -> Workload:
    """The realistic mix, exactly: 20 % of distinct events from new senders, 10 % with an
    attachment, 5 % of deliveries exact duplicates of an earlier delivery (same bytes, same
    event id, later in the topic). Same arguments, same bytes."""
    if events < 1 or tenants < 1:
        raise ValueError("events and tenants must be at least 1")
    rng = random.Random(seed)
    channels = _channels(rng, tenants)
    duplicates = round(events * DUPLICATE_SHARE)
    unique = events - duplicates
    new_count = min(unique, max(1, round(unique * NEW_SENDER_SHARE)))
    flags = [True] * (new_count - 1) + [False] * (unique - new_count)
    is_new = [True, *rng.sample(flags, unique - 1)]
    with_attachment = set(rng.sample(range(unique), round(unique * ATTACHMENT_SHARE)))

    adapter = TelegramAdapter()
    received = datetime.fromtimestamp(BASE_DATE, tz=UTC)
    profiles: list[tuple[str, str | None, str | None, str | None]] = []
    next_message: list[int] = []
    sender_tenant: list[int] = []
    sender_of: list[int] = []
    generated: list[MessageEvent] = []
    for i in range(unique):
        if is_new[i]:
            sender = len(profiles)
            profiles.append(_profile(rng, sender))
            next_message.append(1)
            sender_tenant.append(sender % tenants)
        else:
            sender = rng.randrange(len(profiles))
        channel = channels[sender_tenant[sender]]
        update = telegram_update(
            rng,
            update_id=800_000_000 + i,
            user_id=BASE_USER_ID + sender,
            message_id=next_message[sender],
            date=BASE_DATE + i,
            profile=profiles[sender],
            attachment=i in with_attachment,
        )
        next_message[sender] += 1
        at = received + timedelta(milliseconds=i)
        generated.append(telegram_event(adapter, channel, update, at, f"bench{seed}-{i}"))
        sender_of.append(sender)

    # Topic order: event i at position i, each duplicate somewhere after its original.
    positions = [(float(i), i) for i in range(unique)]
    for original in rng.sample(range(unique), duplicates):  # duplicates < unique always
        positions.append((rng.uniform(original + 0.5, unique), original))
    positions.sort()
    encoded = [(e.conversation_key.encode(), encode_event(e), event_headers(e)) for e in generated]
    deliveries = [Delivery(i, *encoded[i]) for _, i in positions]
    return Workload(
        seed=seed,
        channels=channels,
        events=generated,
        sender_of=sender_of,
        sender_tenant=sender_tenant,
        deliveries=deliveries,
        new_senders=len(profiles),
        with_attachments=len(with_attachment),
        duplicates=duplicates,
    )


def gateway_bodies(
    workload: Workload, count: int, *, start: int = 0
) -> list[tuple[BenchChannel, bytes, str]]:
    """Telegram webhook bodies for the gateway phase: (channel, body, external message id).

    Senders and message ids never overlap the workload's, nor between two calls with
    disjoint [start, start + count) ranges, so every request becomes a new message row."""
    rng = random.Random(workload.seed * 7919 + start)
    tenants = len(workload.channels)
    out: list[tuple[BenchChannel, bytes, str]] = []
    for j in range(start, start + count):
        sender = j % GATEWAY_SENDERS
        user_id = GATEWAY_USER_ID + sender
        message_id = j // GATEWAY_SENDERS + 1
        channel = workload.channels[sender % tenants]
        update = telegram_update(
            rng,
            update_id=900_000_000 + j,
            user_id=user_id,
            message_id=message_id,
            date=BASE_DATE + 10_000_000 + j,
            profile=_profile(random.Random(sender), sender),
            attachment=j % 10 == 0,
        )
        body = json.dumps(update, separators=(",", ":")).encode()
        out.append((channel, body, f"{user_id}:{message_id}"))
    return out
