"""Message templates (`crm_message_templates.template`): `{{name}}` placeholders filled from a
command's `template_params` in ONE pass over the template, so a value is inserted literally:
text in a value that looks like a placeholder stays text, and nothing in a value is read as
markup (replies go out as plain text, no parse mode)."""

from __future__ import annotations

import re
from collections.abc import Mapping

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*\}\}")


class MissingParameters(ValueError):
    """The template names placeholders the command gave no value for."""

    def __init__(self, names: list[str]) -> None:
        super().__init__("template parameter missing: " + ", ".join(names))
        self.names = names


def render(template: str, params: Mapping[str, str]) -> str:
    missing = sorted({m for m in PLACEHOLDER.findall(template) if m not in params})
    if missing:
        raise MissingParameters(missing)
    return PLACEHOLDER.sub(lambda match: params[match.group(1)], template)
