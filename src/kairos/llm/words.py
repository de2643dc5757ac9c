"""Words for people: one sentence on why an item suits a user, written by the model from
the user's actual history, kept only when it is grounded — every title it names is the
item's or one the user actually had (no invented items); otherwise the template reason
stands. Written off the request path (service.py), so asking never waits for them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from kairos.llm.backend import Messages
from kairos.llm.prompt import SYSTEM, Step, history_lines

MAX_CHARS = 240
MIN_TITLE = 4  # shorter catalogue titles are common words, not mentions
_QUOTED = re.compile(r"[\"“'‘]([^\"”'’]{3,120})[\"”'’]")


def explain_prompt(history: Sequence[Step], title: str) -> Messages:
    user = (f"The user's latest items, oldest first:\n{history_lines(history)}\n\n"
            f"In one short sentence addressed to the user, say why they may like \"{title}\". "
            "Mention only titles from the list above or this one.")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def first_sentence(text: str) -> str:
    text = " ".join(text.strip().split())
    match = re.search(r"(.+?[.!?])(\s|$)", text)
    return (match.group(1) if match else text)[:MAX_CHARS].strip()


def grounded(sentence: str, allowed: Iterable[str], catalogue: Iterable[str]) -> bool:
    """No title outside `allowed` (the item's and the history's): neither a quoted one
    nor any catalogue title the sentence contains."""
    if not sentence:
        return False
    allowed_folded = {a.casefold().strip() for a in allowed if a}
    folded = sentence.casefold()
    for quoted in _QUOTED.findall(sentence):
        q = quoted.casefold().strip(" .,!?")
        if not any(q == a or q in a for a in allowed_folded):
            return False
    for title in catalogue:
        t = title.casefold().strip()
        if len(t) >= MIN_TITLE and t in folded and t not in allowed_folded \
                and not any(t in a for a in allowed_folded):
            return False
    return True
