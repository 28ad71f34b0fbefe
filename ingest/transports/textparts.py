"""Long texts cut into parts a provider accepts, never silently shortened.

Lengths are counted in UTF-16 code units: Telegram counts so (its entity offsets do), and for
a provider that counts code points the parts are then only shorter than needed.
"""

from __future__ import annotations


def text_length(text: str) -> int:
    """In UTF-16 code units: an emoji outside the BMP counts twice."""
    return len(text.encode("utf-16-le")) // 2


def _prefix_fitting(text: str, limit: int) -> int:
    units = 0
    for index, char in enumerate(text):
        units += 2 if ord(char) > 0xFFFF else 1
        if units > limit:
            return index
    return len(text)


def split_text(text: str, limit: int) -> list[str]:
    """Parts of at most `limit` units: cut at the last line break that fits, else the last
    space, else inside the word. The separator a cut lands on is dropped; nothing else is."""
    parts: list[str] = []
    rest = text
    while text_length(rest) > limit:
        fits = _prefix_fitting(rest, limit)
        window = rest[: fits + 1]  # a separator just past the limit is a clean cut too
        cut = window.rfind("\n")
        if cut <= 0:
            cut = max(window.rfind(" "), window.rfind("\t"))
        if cut <= 0:
            parts.append(rest[:fits])
            rest = rest[fits:]
            continue
        parts.append(rest[:cut])
        rest = rest[cut + 1 :]
    parts.append(rest)
    return [part for part in parts if part.strip()]


def texts_and_caption(
    text: str | None, has_attachments: bool, text_max: int, caption_max: int
) -> tuple[list[str], str | None]:
    """How a reply's text goes out next to attachments: as the first attachment's caption when
    it fits one, else as text messages of its own (split at `text_max`) sent first."""
    body = text or ""
    if not body.strip():
        return [], None
    if has_attachments and text_length(body) <= caption_max:
        return [], body
    return split_text(body, text_max), None
