"""The reply dispatcher's state machine: one command, executed once.

`ingest_outbound_commands.command_id` decides "once". Per command:
1. New: validated and planned (plan.py); in ONE transaction the chat message (sent by the
   user's member), the command row (`pending`) and `message.created` are recorded. A rule that
   refuses it fails it in that same transaction (`failed`, not retryable).
2. `sending` is committed, then the provider is called once.
3. The outcome is recorded in one transaction: `accepted` (provider ids become message refs,
   where delivery statuses find the message), `failed` (rejected; or transient failures past
   `CRM_INGEST_OUTBOUND_MAX_ATTEMPTS`, retryable) or `unknown` (the request may have been taken).
A transient failure (certainly not accepted) puts the command back to `pending` while it waits,
holding its partition so the chat's later replies stay behind it. A redelivered command found
`sending` was interrupted mid-call by a crash: it becomes `unknown` and is NOT sent again, since
the provider may have delivered it already (no provider here deduplicates a resend for us). A
command found `pending` resumes; anything further along is done.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import structlog
from pydantic import ValidationError

from handlers import chat_events
from handlers.chat_events import Payload, enqueue
from handlers.ingestor import TRANSIENT_ERRORS, Backoff, DeadLetter, Record, log_dead_letter
from handlers.outbound.plan import Channels, InvalidCommand, Plan, build_plan, reply_refs
from handlers.outbound.records import Recorded, fail_command, record_command
from handlers.pg import without_nul
from handlers.statuses import settle_statuses
from ingest import metrics
from ingest.config import Transport
from ingest.events import SendCommand, decode_command
from ingest.transports.sending import (
    MessageSender,
    SendError,
    SendRejected,
    SendResult,
    SendTransient,
)
from sql import QUERIES
from sql.db import pooled

log = structlog.stdlib.get_logger("crm_ingest.outbound")
T = TypeVar("T")
OUTCOME_UNKNOWN = "outcome_unknown"


@dataclass(frozen=True, slots=True)
class Limits:
    max_attempts: int = 5
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 30.0


class Dispatcher:
    def __init__(
        self,
        pool: asyncpg.Pool,
        channels: Channels,
        senders: dict[Transport, MessageSender],
        dead_letter: DeadLetter,
        *,
        store_prefix: str | None,
        limits: Limits = Limits(),
        backoff: Backoff | None = None,
        wake: Callable[[], None] = lambda: None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self._pool = pool
        self._channels = channels
        self._senders = senders
        self._dead_letter = dead_letter
        self._store_prefix = store_prefix
        self._limits = limits
        self._backoff = backoff or Backoff()
        self._wake = wake  # the outbox relay: chat events were committed
        self._sleep = sleep

    async def handle(self, record: Record) -> str:
        """Execute one command record; returns its outcome (a metrics label). Raises only when
        PostgreSQL is unavailable before anything was sent: the record is then redelivered.
        Anything else that fails (PostgreSQL refusing a value, a bug) dead-letters the record
        rather than stall the partition; its row, if any, keeps its state for `dlq replay`."""
        try:
            return await self._handle(record)
        except TRANSIENT_ERRORS:
            raise
        except Exception as exc:
            log.exception("command failed unexpectedly")
            return await self._reject(record, exc, "unknown")

    async def _handle(self, record: Record) -> str:
        try:
            command = decode_command(without_nul(record.value or b""))
        except ValidationError as exc:
            return await self._reject(record, exc, "unknown")
        with structlog.contextvars.bound_contextvars(command_id=str(command.command_id)):
            recorded = await self._pool.fetchrow(QUERIES["outbound_command"], command.command_id)
            plan = None
            if recorded is None or recorded["state"] == "pending":
                try:
                    async with self._pool.acquire() as conn:
                        plan = await build_plan(
                            pooled(conn),
                            command,
                            self._channels,
                            self._senders,
                            self._store_prefix,
                            recorded,
                        )
                except InvalidCommand as exc:
                    if recorded is None:
                        return await self._reject(record, exc, "unknown")
                    # recorded before, and its chat or channel is gone since: failed below
            outcome = await self._execute(command, recorded, plan)
            metrics.observe_command(plan.transport if plan else "unknown", outcome)
            return outcome

    async def _execute(
        self, command: SendCommand, recorded: asyncpg.Record | None, plan: Plan | None
    ) -> str:
        if recorded is not None:
            target = Recorded(
                recorded["tenant_id"],
                recorded["client_id"],
                recorded["chat_id"],
                recorded["message_id"],
                command.command_id,
            )
            if recorded["state"] == "sending":
                # Interrupted mid-call: the provider may have it. Never resend blindly.
                await self._finish_failed(
                    target,
                    "unknown",
                    OUTCOME_UNKNOWN,
                    "the dispatcher stopped while the provider was being called; it may have "
                    "been delivered, so it is not sent again automatically",
                    False,
                )
                return "unknown"
            if recorded["state"] != "pending":
                return "already_done"
            if plan is None or plan.refusal is not None:
                code, reason = (
                    (plan.refusal.code, plan.refusal.message)
                    if plan and plan.refusal
                    else ("invalid", "the chat or channel is gone")
                )
                await self._finish_failed(target, "failed", code, reason, False)
                return "refused"
            return await self._send(plan, target)
        assert plan is not None
        target_or_none = await self._record(plan)
        if target_or_none is None:
            return "already_done"  # a concurrent delivery of the same command recorded it
        if plan.refusal is not None:
            log.info("reply refused", code=plan.refusal.code, reason=plan.refusal.message)
            return "refused"
        return await self._send(plan, target_or_none)

    async def _record(self, plan: Plan) -> Recorded | None:
        async with self._pool.acquire() as proxy, proxy.transaction():
            target = await record_command(pooled(proxy), plan)
        if target is not None:
            self._wake()
        return target

    async def _send(self, plan: Plan, target: Recorded) -> str:
        sender = self._senders[plan.transport]
        while True:
            attempts = await self._pool.fetchval(QUERIES["mark_command_sending"], target.command_id)
            if attempts is None:
                return "already_done"
            started = time.perf_counter()
            try:
                result = await sender.send(plan.message, plan.channel.config)
            except SendError as exc:
                metrics.observe_send(plan.transport, time.perf_counter() - started)
                if exc.accepted_ids:
                    # Some parts went out (a long text is several messages): resending the
                    # whole would repeat them, so the rest is reported, not retried.
                    reason = (
                        f"{len(exc.accepted_ids)} part(s) went out before {exc.code}: "
                        f"{exc.message}; the rest is not sent again automatically"
                    )
                    await self._finish_failed(
                        target, "failed", "partially_sent", reason, False, plan, exc.accepted_ids
                    )
                    return "partial"
                if isinstance(exc, SendTransient):
                    if attempts >= self._limits.max_attempts:
                        await self._finish_failed(target, "failed", exc.code, exc.message, True)
                        return "transient_exhausted"
                    await self._wait_to_retry(target, exc, attempts)
                    continue
                if isinstance(exc, SendRejected):
                    await self._finish_failed(target, "failed", exc.code, exc.message, False)
                    return "rejected"
                reason = f"{exc.code}: {exc.message}; not sent again automatically"
                await self._finish_failed(target, "unknown", OUTCOME_UNKNOWN, reason, False)
                return "unknown"
            except Exception as exc:  # a sender's bug: whether the provider got it is unknown
                metrics.observe_send(plan.transport, time.perf_counter() - started)
                log.exception("sender raised an unexpected error")
                reason = f"{type(exc).__name__}; not sent again automatically"
                await self._finish_failed(target, "unknown", OUTCOME_UNKNOWN, reason, False)
                return "unknown"
            metrics.observe_send(plan.transport, time.perf_counter() - started)
            await self._durably(functools.partial(self._accept, plan, target, result))
            return "accepted"

    async def _wait_to_retry(self, target: Recorded, exc: SendTransient, attempts: int) -> None:
        delay = min(
            self._limits.backoff_max_s,
            exc.retry_after
            if exc.retry_after is not None
            else self._limits.backoff_initial_s * 2 ** (attempts - 1),
        )
        log.warning(
            "send failed transiently, will retry",
            code=exc.code,
            reason=exc.message,
            attempt=attempts,
            delay_s=delay,
        )
        # Certainly not accepted: a crash while waiting resumes with a fresh attempt.
        await self._durably(
            lambda: self._pool.execute(QUERIES["unmark_command_sending"], target.command_id)
        )
        await self._sleep(delay)

    async def _accept(self, plan: Plan, target: Recorded, result: SendResult) -> None:
        refs = reply_refs(plan.transport, plan.message.to, result.provider_message_ids)
        async with self._pool.acquire() as proxy, proxy.transaction():
            conn = pooled(proxy)
            finished = await conn.fetchval(
                QUERIES["mark_command_accepted"],
                target.command_id,
                list(result.provider_message_ids),
            )
            if finished is None:
                return
            await _record_refs(conn, plan, target, refs)
            events: list[Payload] = [chat_events.send_accepted(*target.event_ids, finished)]
            # A status the provider sent before we recorded its id settles now.
            sources = {(plan.channel.id, ref): target.command_id for ref in refs}
            events += [payload for payload, _ in await settle_statuses(conn, sources)]
            await enqueue(conn, [(event, target.command_id) for event in events])
        log.info("reply accepted", transport=plan.transport, provider_ids=len(refs))
        self._wake()

    async def _finish_failed(
        self,
        target: Recorded,
        state: str,
        code: str,
        reason: str,
        retryable: bool,
        plan: Plan | None = None,
        accepted: tuple[str, ...] = (),
    ) -> None:
        """`accepted`: ids of the parts that did go out (recorded as refs, as if accepted)."""

        async def record() -> None:
            async with self._pool.acquire() as proxy, proxy.transaction():
                conn = pooled(proxy)
                events = await fail_command(conn, target, state, code, reason, retryable, accepted)
                if events and plan is not None and accepted:
                    refs = reply_refs(plan.transport, plan.message.to, accepted)
                    await _record_refs(conn, plan, target, refs)
                await enqueue(conn, [(event, target.command_id) for event in events])

        await self._durably(record)
        log.warning("reply failed", state=state, code=code, reason=reason, retryable=retryable)
        self._wake()

    async def _durably(self, work: Callable[[], Awaitable[T]]) -> T:
        """After the provider was called, its outcome must be recorded: PostgreSQL being
        unavailable is waited out (a redelivery would turn an accepted send into unknown)."""
        attempt = 0
        while True:
            try:
                return await work()
            except TRANSIENT_ERRORS as exc:
                log.warning("database unavailable, retrying", error=repr(exc), attempt=attempt)
                await self._backoff.wait(attempt)
                attempt += 1

    async def _reject(self, record: Record, exc: BaseException, transport: str) -> str:
        log_dead_letter("command dead-lettered", record, exc)
        await self._dead_letter(record, exc)
        metrics.observe_command(transport, "dead_lettered")
        return "dead_lettered"


async def _record_refs(
    conn: asyncpg.Connection, plan: Plan, target: Recorded, refs: list[str]
) -> None:
    """A reply's provider ids as message refs; an email's keep its thread, so the next reply
    threads onto it."""
    meta: dict[str, Any] = {"direction": "outbound", "command_id": str(target.command_id)}
    thread = plan.message.email_thread
    if plan.transport == "email":
        meta["subject"] = thread.subject if thread else None
        meta["references"] = [r.strip("<>") for r in thread.references] if thread else []
    await conn.execute(QUERIES["record_reply_refs"], plan.channel.id, target.message_id, meta, refs)
