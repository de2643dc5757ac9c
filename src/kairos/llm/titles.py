"""A prefix tree over the token ids of the catalogue's titles, ended by the model's
end-of-answer token: decoding that only follows its edges can only spell a title that
exists."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


@dataclass(slots=True)
class Node:
    children: dict[int, Node] = field(default_factory=dict)
    title: str | None = None  # set on the node reached by the end token


class TitleTrie:
    def __init__(self, titles: Iterable[str], tokenize: Callable[[str], list[int]] | None, end: int = -1) -> None:
        """`tokenize` None: only the list of titles (a remote model matches its text to it)."""
        self.root = Node()
        self.end = end
        self.all: list[str] = []
        for title in titles:
            title = title.strip()
            if not title:
                continue
            if tokenize is None:
                if title not in self.all:
                    self.all.append(title)
                continue
            node = self.root
            for token in [*tokenize(title), end]:
                node = node.children.setdefault(token, Node())
            if node.title is None:
                node.title = title
                self.all.append(title)

    def __len__(self) -> int:
        return len(self.all)
