"""What the parsers' property tests share: settings, payload mutations, the allowed outcomes."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NamedTuple, get_args

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st

from ingest.errors import Unauthorized
from ingest.events import ReasonKind, decode_event, encode_event
from ingest.intake import Taken, take
from ingest.transports.base import ParseContext, RawRequest, TransportAdapter

FUZZ = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
FUZZ_RECEIVED_AT = datetime(2024, 5, 1, tzinfo=UTC)

KeyPath = tuple[Any, ...]


class JsonFuzzTarget(NamedTuple):
    """A JSON webhook as the shared property tests of test_json_webhooks.py drive it."""

    check: Callable[[bytes], object]  # asserts what the adapter made of an authenticated body
    captures: dict[str, bytes]  # its captured payloads by name
    objects: st.SearchStrategy[Any]  # random documents keyed as its parser reads them
    required: tuple[str, Any]  # set on a random object, so that it gets past the first check
    replacements: st.SearchStrategy[Any]  # what a mutation writes into a captured document
    corrupt_from: int  # the largest offset drawn for byte-level corruption


def paths(node: Any, prefix: KeyPath = ()) -> list[KeyPath]:
    """Every key and index path below `node`, for a mutation to pick from."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, child in node.items():
            out += paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            out += paths(child, (*prefix, index))
    return out


def mutate(
    doc: Any,
    data: st.DataObject,
    replacements: st.SearchStrategy[Any],
    within: list[KeyPath] | None = None,
) -> None:
    """Delete or replace 1-3 values of `doc`: at any path (listed again after each change) or
    only at the paths `within`. A drawn value is deep-copied, so no two places share it."""
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        candidates = paths(doc) if within is None else within
        if not candidates:
            break
        path = data.draw(st.sampled_from(candidates), label="path")
        parent = doc
        try:
            for key in path[:-1]:
                parent = parent[key]
            if data.draw(st.booleans(), label="delete"):
                del parent[path[-1]]
            else:
                parent[path[-1]] = copy.deepcopy(data.draw(replacements, label="value"))
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this path


def corrupt(body: bytes, at: int, junk: bytes) -> bytes:
    """`body` with `junk` written over it from byte `at` (taken modulo its length)."""
    at %= len(body)
    return body[:at] + junk + body[at + len(junk) :]


def outcome(
    adapter: TransportAdapter,
    request: RawRequest,
    ctx: ParseContext,
    *,
    unverifiable: str | None = None,
) -> Taken | None:
    """What the gateway makes of an authenticated `request`: never a 4xx. Events that survive
    the Kafka encoding unchanged, and whatever could not become events kept with a short reason
    of a known kind (never "adapter_error": that would be a parser crash). The whole body, when
    kept, is kept byte for byte.

    Only a body the signature cannot be computed over may be refused (None), as unauthenticated,
    and only when its reason contains `unverifiable`."""
    try:
        verified = adapter.verify(request, ctx)
    except Unauthorized as exc:
        refused: Unauthorized | None = exc
    else:
        refused = None
    if refused is not None:
        assert unverifiable is not None, refused.reason
        assert unverifiable in refused.reason, refused.reason
        event("unverifiable 401")
        return None
    taken = take(adapter, request, ctx, verified)
    for ev in taken.events:
        assert decode_event(encode_event(ev)) == ev
    for kept in taken.kept:
        assert kept.reason_kind in get_args(ReasonKind)
        assert kept.reason_kind != "adapter_error", kept.reason
        assert 0 < len(kept.reason) <= 500
        if not kept.element:
            assert kept.body == request.body
        event(f"kept {kept.reason_kind}")  # shown by --hypothesis-show-statistics
    return taken
