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

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BadPayload(WebhookRejected):
    status_code = 400


class UnprocessablePayload(WebhookRejected):
    status_code = 422


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


class ChannelConfigError(IngestError, ValueError):
    """`channel add` was given a config the transport cannot work with."""
