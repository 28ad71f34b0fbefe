"""A real SMTP server for the email sender (provider-apis.md §4.1, §5): aiosmtpd in a thread of
its own on 127.0.0.1, recording each envelope and the raw DATA, answering
`250 2.0.0 Ok: queued as <id>`.

Modes a test sets: `users` (AUTH PLAIN/LOGIN required, a wrong password gets 535),
`refuse_rcpt` (550 on RCPT), `defer_rcpt` (450 on RCPT), `rewrite_message_id` (an SES-like
relay replaces the Message-ID with its own and names it in the reply), `data_delay_s` (the
DATA answer comes late: a client timeout there is an unknown outcome).

`tls`: "starttls" offers and requires STARTTLS (AUTH only after it), "implicit" speaks TLS from
the first byte (smtps). Their certificate is self-signed for 127.0.0.1 (`tls_certificate`);
a test trusts it through `SSL_CERT_FILE`, as an operator's CA bundle would be trusted.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import Any, Literal

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
    tls: Literal["none", "starttls", "implicit"] = "none"
    certificate: tuple[Path, Path] | None = None  # (cert, key) PEM files for the TLS modes
    tls_sessions: int = 0  # sessions that spoke TLS when MAIL came
    _controller: Controller | None = None

    def url(self, user: str | None = None, password: str | None = None) -> str:
        auth = f"{user}:{password}@" if user is not None else ""
        scheme = "smtps" if self.tls == "implicit" else "smtp"
        return f"{scheme}://{auth}{self.host}:{self.port}"

    def reset(self) -> None:
        self.users.clear()
        self.refuse_rcpt.clear()
        self.defer_rcpt.clear()
        self.rewrite_message_id = False
        self.data_delay_s = 0.0
        self.received.clear()
        self.logins.clear()
        self.tls_sessions = 0

    def start(self) -> None:
        probe = socket.socket()
        probe.bind((self.host, 0))
        self.port = probe.getsockname()[1]
        probe.close()
        tls: dict[str, Any] = {"auth_require_tls": False}
        if self.tls != "none":
            assert self.certificate is not None
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*self.certificate)
            if self.tls == "starttls":
                tls = {"tls_context": context, "require_starttls": True}
            else:
                # aiosmtpd cannot tell an implicit-TLS session from a plain one.
                tls = {"ssl_context": context, "auth_require_tls": False}
        self._controller = Controller(
            _Handler(self),
            hostname=self.host,
            port=self.port,
            authenticator=self._authenticate,
            auth_required=False,
            **tls,
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
        if server.transport is not None and server.transport.get_extra_info("sslcontext"):
            self.fake.tls_sessions += 1
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


def write_certificate(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate for `host` (an IP address), as PEM files (cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@pytest.fixture(scope="session")
def tls_certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_certificate(tmp_path_factory.mktemp("smtp-tls"))


@pytest.fixture(scope="session")
def _smtp_tls_fakes(tls_certificate: tuple[Path, Path]) -> Iterator[dict[str, SmtpFake]]:
    fakes = {
        mode: SmtpFake(tls=mode, certificate=tls_certificate) for mode in ("starttls", "implicit")
    }
    for fake in fakes.values():
        fake.start()
    try:
        yield fakes
    finally:
        for fake in fakes.values():
            fake.stop()


@pytest.fixture
def smtp_tls_servers(
    _smtp_tls_fakes: dict[str, SmtpFake],
    tls_certificate: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, SmtpFake]:
    """The STARTTLS and implicit-TLS servers, their certificate trusted by this test."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_certificate[0]))
    for fake in _smtp_tls_fakes.values():
        fake.reset()
    return _smtp_tls_fakes


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
