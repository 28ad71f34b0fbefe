"""The gateway's OpenAPI document (served at GET /openapi.json).

Written out rather than generated: the webhook route is one Starlette route for every
transport, while the document states each provider's body, auth header and answers.
A unit test checks that it names exactly the routes the app serves.
"""

from __future__ import annotations

from typing import Any

ERROR = {"$ref": "#/components/schemas/Error"}
CHANNEL_ID = {
    "name": "channel_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}


def _answers(ok: dict[str, Any]) -> dict[str, Any]:
    refused = {"content": {"application/json": {"schema": ERROR}}}
    return {
        "200": ok,
        "400": {
            "description": "Unreadable request framing (a malformed Content-Length, a client "
            "that disconnected), before authentication; never for an authenticated body",
            **refused,
        },
        "401": {
            "description": "Missing, wrong or unverifiable credentials; checked before the "
            "body is parsed; nothing published",
            **refused,
        },
        "404": {"description": "Unknown or disabled channel, or of another transport", **refused},
        "413": {
            "description": "Body over the transport's limit, or an event over the broker's "
            "record limit",
            **refused,
        },
        "503": {
            "description": "The broker did not acknowledge every event; retry",
            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
            **refused,
        },
    }


def _webhook(summary: str, auth: str, media_types: list[str], ok_media: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "description": f"Authenticated by {auth}, checked on the raw body before parsing. "
        "200 only once every event of the request is acknowledged by Kafka. Once "
        "authenticated, content never earns a 4xx: what cannot become events (the whole "
        "body, or single elements of a batch) is kept on the dead-letter topic with its "
        "reason (`crm-ingest dlq list`, replayable with `dlq replay`), and the 200 waits for "
        "that acknowledgement too.",
        "parameters": [CHANNEL_ID],
        "requestBody": {
            "required": True,
            "content": {
                media: {"schema": {"type": "object"} if "json" in media else {"type": "string"}}
                for media in media_types
            },
        },
        "responses": _answers(
            {
                "description": "Accepted: its events, and anything kept, acknowledged by Kafka",
                "content": {ok_media: {}},
            }
        ),
    }


def openapi_document(version: str = "0.1.0") -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "crm-ingest gateway",
            "version": version,
            "description": "Provider webhooks in, versioned events to Kafka.",
        },
        "paths": {
            "/webhooks/telegram/{channel_id}": {
                "post": _webhook(
                    "Telegram Update",
                    "X-Telegram-Bot-Api-Secret-Token",
                    ["application/json"],
                    "application/json",
                )
            },
            "/webhooks/whatsapp/{channel_id}": {
                "get": {
                    "summary": "WhatsApp verification handshake",
                    "parameters": [
                        CHANNEL_ID,
                        {"name": "hub.mode", "in": "query", "schema": {"type": "string"}},
                        {"name": "hub.verify_token", "in": "query", "schema": {"type": "string"}},
                        {"name": "hub.challenge", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": {"description": "The challenge", "content": {"text/plain": {}}},
                        "403": {"description": "Wrong mode or token"},
                        "404": {"description": "Unknown channel"},
                    },
                },
                "post": _webhook(
                    "WhatsApp Cloud API notification (many messages/statuses)",
                    "X-Hub-Signature-256 (HMAC-SHA256 of the body with the app secret)",
                    ["application/json"],
                    "application/json",
                ),
            },
            "/webhooks/sms/{channel_id}": {
                "post": _webhook(
                    "Twilio inbound SMS/MMS or status callback",
                    "X-Twilio-Signature (HMAC-SHA1 of URL + sorted parameters)",
                    ["application/x-www-form-urlencoded"],
                    "application/xml",
                )
            },
            "/webhooks/email/{channel_id}": {
                "post": _webhook(
                    "Inbound email: raw RFC 5322, or a Mailgun route",
                    "Authorization: Bearer <token>, or Mailgun's signature",
                    ["message/rfc822", "application/x-www-form-urlencoded", "multipart/form-data"],
                    "application/json",
                )
            },
            "/healthz": {"get": {"summary": "Alive", "responses": {"200": {"description": "ok"}}}},
            "/readyz": {
                "get": {
                    "summary": "PostgreSQL and the broker answer",
                    "responses": {
                        "200": {"description": "ready"},
                        "503": {"description": "not ready"},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "text format"}},
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI"}},
                }
            },
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {"error": {"type": "string"}},
                    "required": ["error"],
                }
            }
        },
    }
