"""The text a language model reads for an item or a user."""

from __future__ import annotations

import hashlib
from typing import Any

from kairos.store.base import ItemRecord

DEFAULT_ITEM_TEMPLATE = "{title}. {categories}. {text} {attributes}"


def item_text(item: ItemRecord, template: str = DEFAULT_ITEM_TEMPLATE,
              attributes: tuple[str, ...] = ()) -> str:
    """Compose title, categories, description and the chosen attributes; empty parts
    leave no stray punctuation. An item with no text at all composes to ''."""
    chosen = [f"{name}: {_plain(item.attributes[name])}" for name in attributes if name in item.attributes]
    text = template.format(
        title=item.title.strip(),
        categories=", ".join(item.categories),
        text=item.text.strip(),
        attributes="; ".join(chosen),
    )
    parts = [p.strip() for p in text.split(". ")]
    return ". ".join(p for p in parts if p and p != ".").strip(" .") if item.title or item.text or item.categories else ""


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def _plain(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)
