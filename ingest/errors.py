"""The gateway's own exception tree.

Adapters and the publisher translate library exceptions (json, pydantic, aiokafka, email, ...)
into these at one boundary, with `raise ... from exc`; the HTTP layer maps each to a status code
and a short JSON reason and never lets anything else become a 500 with a half-published request.
"""

from __future__ import annotations


class IngestError(Exception):
    """Base of every error crm-ingest raises on purpose."""


class WebhookRejected(IngestError):
    """The request is refused; the provider gets `status_code` and a short `reason`."""

    status_code = 400
    # For content failures after authentication: the kind recorded with the kept webhook.
    reason_kind = "malformed"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BadPayload(WebhookRejected):
    status_code = 400


class UnprocessablePayload(WebhookRejected):
    status_code = 422
    reason_kind = "unprocessable"


class NoSender(UnprocessablePayload):
    reason_kind = "no_sender"


class ChannelMismatch(UnprocessablePayload):
    """Signed for this channel's app, but addressed to another account of it."""

    reason_kind = "channel_mismatch"


class Unauthorized(WebhookRejected):
    status_code = 401


class Forbidden(WebhookRejected):
    status_code = 403


class ChannelNotFound(WebhookRejected):
    status_code = 404


class PayloadTooLarge(WebhookRejected):
    status_code = 413


class EventTooLarge(PayloadTooLarge):
    """An event is over the broker's record size limit: retrying cannot help."""


class PublishUnavailable(IngestError):
    """The broker did not acknowledge every event in time: answer 503 so the provider retries."""


class ClaimCheckUnavailable(PublishUnavailable):
    """A kept body too large for a broker record could not be put in the object store."""


class ChannelConfigError(IngestError, ValueError):
    """`channel add` was given a config the transport cannot work with."""
