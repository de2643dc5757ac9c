"""What the model reads: the user's latest items (title, what they did, how long ago)
and, for re-ranking, the candidates each behind a letter."""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kairos.llm.backend import Messages

LETTERS = string.ascii_uppercase  # up to 26 candidates
SYSTEM = "You are a recommender. You read what a user did recently and pick what they will want next."
HISTORY = 10  # latest items shown


@dataclass(frozen=True, slots=True)
class Step:
    title: str
    event: str  # view, click, purchase, rating, ...
    age_s: float  # seconds before now


def steps_of(recent: Sequence[Any], titles: Sequence[str], ids: Sequence[str], now: float) -> list[Step]:
    """A user's sequence steps (catalogue index, event type, timestamp) as the prompt shows them."""
    return [Step(titles[s.item] or ids[s.item], s.type, max(0.0, now - s.timestamp)) for s in recent]


def ago(seconds: float) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''} ago"
    return "just now"


def history_lines(history: Sequence[Step], limit: int = HISTORY) -> str:
    steps = list(history)[-limit:]
    return "\n".join(f"- {s.title} ({s.event}, {ago(s.age_s)})" for s in steps) or "- (nothing yet)"


def rerank_prompt(history: Sequence[Step], candidates: Sequence[str]) -> Messages:
    if len(candidates) > len(LETTERS):
        raise ValueError(f"at most {len(LETTERS)} candidates, not {len(candidates)}")
    options = "\n".join(f"{LETTERS[i]}. {title}" for i, title in enumerate(candidates))
    user = (f"The user's latest items, oldest first:\n{history_lines(history)}\n\n"
            f"Candidates:\n{options}\n\n"
            "Which candidate will the user choose next? Answer with its letter only.")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def generate_prompt(history: Sequence[Step]) -> Messages:
    user = (f"The user's latest items, oldest first:\n{history_lines(history)}\n\n"
            "What will the user choose next? Answer with the exact title of one item.")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
