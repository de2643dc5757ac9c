"""What the language model adds to one user's list, in either mode, from plain inputs
(titles by catalogue index, the user's steps): the engine and the evaluation share it.

rerank    the fused top candidates, re-ordered by the model (rerank.py)
generate  titles the model writes (titles.py keeps them real), mapped back to items
          (service.py serves them as the `llm` source in fusion)
"""

from __future__ import annotations

from collections.abc import Sequence

from kairos.llm.backend import LanguageModel
from kairos.llm.prompt import Step, generate_prompt
from kairos.llm.rerank import rerank
from kairos.llm.titles import TitleTrie



class LlmRecommender:
    def __init__(self, model: LanguageModel, titles: Sequence[str], candidates: int = 20,
                 blend: float = 0.0) -> None:
        self.model = model
        self.titles = list(titles)
        self.candidates = candidates
        self.blend = blend
        self._trie: TitleTrie | None = None
        self._by_title: dict[str, int] = {}
        for index, title in enumerate(self.titles):
            self._by_title.setdefault(title.strip(), index)

    @property
    def trie(self) -> TitleTrie:
        if self._trie is None:
            tokenize = getattr(self.model, "title_ids", None)
            end = getattr(self.model, "end_id", -1)
            self._trie = TitleTrie(self.titles, tokenize, end)
        return self._trie

    def rerank(self, history: Sequence[Step], served: Sequence[int]) -> list[int]:
        """The served list with its top `candidates` in the model's order."""
        head = list(served[: self.candidates])
        ordered = rerank(self.model, history, [(str(i), self.titles[i] or str(i)) for i in head], self.blend)
        return [int(i) for i in ordered] + list(served[self.candidates:])

    def generate(self, history: Sequence[Step], n: int, exclude: set[int]) -> list[int]:
        """Up to `n` catalogue items the model names next, none of `exclude`."""
        titles = self.model.generate_titles(generate_prompt(history), self.trie, n + 5)  # some are excluded
        out: list[int] = []
        for title in titles:
            index = self._by_title.get(title.strip())
            if index is not None and index not in exclude and index not in out:
                out.append(index)
        return out[:n]
