"""Channel credentials through the real CLI and gateway processes: secrets never in a dump, a
printout or a log line; webhooks keep verifying across `channel set`, `rotate` and `rekey`; a
wrong key stops a process at start with one line naming the setting."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from ingest.credentials import generate_key
from ingest.embedded import free_port
from ingest.transports.sms import compute_signature
from sql.db import connect
from tests.acceptance.test_cli import CLI, PAYLOAD, run, stop
from tests.acceptance.test_cli import env as env  # the fixture, shared
from tests.integration.signing import sms_fields
from tests.support import eventually

pytestmark = pytest.mark.acceptance

AUTH_TOKEN_A = "twilio-auth-token-aaaa-1111"
AUTH_TOKEN_B = "twilio-auth-token-bbbb-2222"
BOT_TOKEN = "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11"


class Gateway:
    """A `crm-ingest gateway` process whose output is kept in a file, for the secret check."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*CLI, "gateway", "--port", str(self.port)], env=env, stdout=out, stderr=out
            )
        self.url = f"http://127.0.0.1:{self.port}"

    async def ready(self) -> None:
        async with httpx.AsyncClient(base_url=self.url) as client:

            async def status() -> int:
                try:
                    return (await client.get("/readyz")).status_code
                except httpx.TransportError:
                    return 0

            assert await eventually(status, lambda s: s == 200, within=30) == 200

    async def telegram(self, channel: dict[str, Any], secret: str) -> int:
        async with httpx.AsyncClient(base_url=self.url) as client:
            response = await client.post(
                channel["webhook_path"],
                content=PAYLOAD.read_bytes(),
                headers={
                    "content-type": "application/json",
                    "x-telegram-bot-api-secret-token": secret,
                },
            )
            return response.status_code

    async def sms(self, channel: dict[str, Any], auth_token: str) -> int:
        params = sms_fields("basic_text")
        url = self.url + channel["webhook_path"]
        signature = compute_signature(auth_token, url, params)
        async with httpx.AsyncClient() as client:
            response = await client.post(
                url,
                content=urlencode(params).encode(),
                headers={
                    "content-type": "application/x-www-form-urlencoded",
                    "x-twilio-signature": signature,
                },
            )
            return response.status_code


def cli(env: dict[str, str], *args: str) -> dict[str, Any]:
    return json.loads(run(env, *args).stdout)


async def test_secrets_stay_sealed_and_webhooks_verify_across_set_rotate_and_rekey(
    env: dict[str, str], tmp_path: Path
) -> None:
    # Changes reach the gateway at once (the cache's TTL is what an operator waits otherwise).
    env = {**env, "CRM_INGEST_CHANNEL_CACHE_TTL_S": "0"}
    run(env, "migrate")
    run(env, "topics")
    tenant = cli(env, "tenant", "add")["id"]
    telegram = cli(env, "channel", "add", "--tenant", tenant, "--transport", "telegram")
    first_secret = telegram["config"]["secret_token"]  # generated: printed once, in full
    sms = cli(
        env,
        *("channel", "add", "--tenant", tenant, "--transport", "sms"),
        *("--config", f"auth_token={AUTH_TOKEN_A}"),
    )
    assert sms["config"] == {"auth_token": "…1111"}  # given by the operator: masked
    changed = cli(env, "channel", "set", telegram["id"], "--config", f"bot_token={BOT_TOKEN}")
    assert changed["config"] == {"secret_token": "…" + first_secret[-4:], "bot_token": "…ew11"}
    assert changed["changed"] == ["bot_token"]
    assert any("BotFather" in step for step in changed["next_steps"])

    gateway = Gateway(env, tmp_path / "gateway.log")
    try:
        await gateway.ready()
        assert await gateway.telegram(telegram, first_secret) == 200
        assert await gateway.sms(sms, AUTH_TOKEN_A) == 200

        # Twilio signs with the old token until its secondary is promoted: both verify.
        cli(env, "channel", "set", sms["id"], "--config", f"auth_token={AUTH_TOKEN_B}")
        assert await gateway.sms(sms, AUTH_TOKEN_A) == 200
        assert await gateway.sms(sms, AUTH_TOKEN_B) == 200
        assert await gateway.sms(sms, "some-other-token") == 401

        # Telegram sends the old secret until setWebhook is called again: both verify.
        rotated = cli(env, "channel", "rotate", telegram["id"], "secret_token")
        second_secret = rotated["config"]["secret_token"]
        assert second_secret != first_secret
        assert rotated["config"]["bot_token"] == "…ew11"
        assert "secret_token" in rotated["previous_accepted_until"]
        assert any("setWebhook" in step and second_secret in step for step in rotated["next_steps"])
        assert await gateway.telegram(telegram, first_secret) == 200
        assert await gateway.telegram(telegram, second_secret) == 200
        # Rotating again without a grace period: only the newest value works.
        third = cli(env, "channel", "rotate", telegram["id"], "secret_token", "--grace-hours", "0")[
            "config"
        ]["secret_token"]
        assert await gateway.telegram(telegram, second_secret) == 401
        assert await gateway.telegram(telegram, third) == 200

        # Re-keying while the gateway runs with the old key only would break it; during a
        # rotation every process holds both keys, newest first.
        old_key, new_key = env["CRM_INGEST_SECRETS_KEY"], generate_key()
        both = {**env, "CRM_INGEST_SECRETS_KEY": f"{new_key},{old_key}"}
        assert cli(both, "secrets", "rekey") == {"rekeyed": 2}
        assert cli(both, "secrets", "rekey") == {"rekeyed": 0}
    finally:
        assert stop(gateway.proc) == 0

    # Dumped as a support engineer would: none of the secrets given or generated appear.
    secrets = [AUTH_TOKEN_A, AUTH_TOKEN_B, BOT_TOKEN, first_secret, second_secret, third]
    conn = await connect(env["DATABASE_URL"])
    try:
        dump = json.dumps(
            [dict(r) for r in await conn.fetch("SELECT * FROM ingest_channels")], default=str
        )
    finally:
        await conn.close()
    assert "enc:v1:" in dump
    assert not [s for s in secrets if s in dump]

    # The old key is retired: a gateway with only the new key verifies the newest secrets.
    new_only = {**env, "CRM_INGEST_SECRETS_KEY": new_key}
    gateway = Gateway(new_only, tmp_path / "gateway.log")
    try:
        await gateway.ready()
        assert await gateway.telegram(telegram, third) == 200
        assert await gateway.sms(sms, AUTH_TOKEN_B) == 200
    finally:
        assert stop(gateway.proc) == 0

    # A process holding only the retired key stops at start, with one line naming the setting.
    for verb in ("gateway", "consume"):
        failed = run(env, verb, check=False)
        assert failed.returncode != 0
        assert failed.stderr.splitlines()[-1].startswith(
            "crm-ingest: error: invalid setting CRM_INGEST_SECRETS_KEY"
        ), failed.stderr
    missing = run({**env, "CRM_INGEST_SECRETS_KEY": ""}, "gateway", check=False)
    assert missing.stderr.splitlines()[-1] == (
        "crm-ingest: error: CRM_INGEST_SECRETS_KEY is not set "
        "(crm-ingest secrets generate-key prints a new one)"
    )

    # Every log line the gateways wrote, and every CLI error: no secret in any of them.
    logs = (tmp_path / "gateway.log").read_text() + failed.stderr + missing.stderr
    assert "webhook accepted" in logs
    assert not [s for s in secrets if s in logs]
