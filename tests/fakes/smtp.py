"""A real SMTP server for the email sender (provider-apis.md §4.1, §5): aiosmtpd in a thread of
its own on 127.0.0.1, recording each envelope and the raw DATA, answering
`250 2.0.0 Ok: queued as <id>`.

Modes a test sets: `users` (AUTH PLAIN/LOGIN required, a wrong password gets 535),
`refuse_rcpt` (550 on RCPT), `defer_rcpt` (450 on RCPT), `rewrite_message_id` (an SES-like
relay replaces the Message-ID with its own and names it in the reply), `data_delay_s` (the
DATA answer comes late: a client timeout there is an unknown outcome).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.policy import SMTP as SMTP_POLICY
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


@dataclass(frozen=True, slots=True)
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes  # the raw DATA as stored (after any rewrite)
    login: str | None
    queue_id: str


@dataclass(slots=True)
class SmtpFake:
    host: str = "127.0.0.1"
    port: int = 0
    users: dict[str, str] = field(default_factory=dict)
    refuse_rcpt: set[str] = field(default_factory=set)
    defer_rcpt: set[str] = field(default_factory=set)
    rewrite_message_id: bool = False
    data_delay_s: float = 0.0
    received: list[Received] = field(default_factory=list)
    logins: dict[int, str] = field(default_factory=dict)  # session id → user
    _controller: Controller | None = None

    def url(self, user: str | None = None, password: str | None = None) -> str:
        auth = f"{user}:{password}@" if user is not None else ""
        return f"smtp://{auth}{self.host}:{self.port}"

    def reset(self) -> None:
        self.users.clear()
        self.refuse_rcpt.clear()
        self.defer_rcpt.clear()
        self.rewrite_message_id = False
        self.data_delay_s = 0.0
        self.received.clear()
        self.logins.clear()

    def start(self) -> None:
        probe = socket.socket()
        probe.bind((self.host, 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._controller = Controller(
            _Handler(self),
            hostname=self.host,
            port=self.port,
            authenticator=self._authenticate,
            auth_require_tls=False,
            auth_required=False,
        )
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user, password = data.login.decode(), data.password.decode()
        if self.users.get(user) != password:
            return AuthResult(success=False, handled=False)  # aiosmtpd answers 535 5.7.8
        self.logins[id(session)] = user
        return AuthResult(success=True)


class _Handler:
    def __init__(self, fake: SmtpFake) -> None:
        self.fake = fake

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if self.fake.users and id(session) not in self.fake.logins:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if address in self.fake.refuse_rcpt:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if address in self.fake.defer_rcpt:
            return f"450 4.2.0 <{address}>: Recipient address rejected: try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.fake.data_delay_s:
            await asyncio.sleep(self.fake.data_delay_s)
        queue_id = f"4Fq{len(self.fake.received) + 1:06d}Z"
        raw = envelope.original_content or b""
        if self.fake.rewrite_message_id:
            parsed = message_from_bytes(raw, policy=SMTP_POLICY)
            del parsed["Message-ID"]
            parsed["Message-ID"] = f"<{queue_id}@relay.fake>"
            raw = parsed.as_bytes()
        self.fake.received.append(
            Received(
                str(envelope.mail_from),
                list(envelope.rcpt_tos),
                raw,
                self.fake.logins.get(id(session)),
                queue_id,
            )
        )
        if self.fake.rewrite_message_id:
            return f"250 2.0.0 Ok: queued as <{queue_id}@relay.fake>"
        return f"250 2.0.0 Ok: queued as {queue_id}"


@pytest.fixture(scope="session")
def _smtp_fake() -> Iterator[SmtpFake]:
    fake = SmtpFake()
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def smtp_server(_smtp_fake: SmtpFake) -> SmtpFake:
    _smtp_fake.reset()
    return _smtp_fake
