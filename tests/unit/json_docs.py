"""What the JSON webhooks' unit tests share: a body given as bytes, text or a JSON document, and
a captured document with one value changed or removed."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any

MISSING: Any = object()  # "leave it out": a field deleted from a document, a header not sent

JsonBody = bytes | str | dict[str, Any] | list[Any]


def json_bytes(body: JsonBody) -> bytes:
    """A body given as bytes, text or a JSON document, as the bytes a provider would send."""
    if isinstance(body, dict | list):
        body = json.dumps(body)
    return body.encode() if isinstance(body, str) else body


def mutated(doc: Any, path: Sequence[str | int], value: object = MISSING) -> Any:
    """A deep copy of `doc`, the value at `path` replaced (or deleted: `value` MISSING)."""
    data = copy.deepcopy(doc)
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is MISSING:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data
