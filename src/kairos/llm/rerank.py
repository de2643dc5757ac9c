"""LlamaRec-style re-ranking: the candidates are listed behind letters and each is
scored by the probability of its letter at the answer position, one forward pass per
order, no free text. Small models favour early letters ("A"), so the candidates are
scored in two orders (as given, reversed) and the log-probabilities averaged; `blend`
adds the retrieval order back (log of the reciprocal rank), since a small model alone
is known to be near chance zero-shot."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kairos.llm.backend import LanguageModel
from kairos.llm.prompt import LETTERS, Step, rerank_prompt


def rerank_scores(model: LanguageModel, history: Sequence[Step], titles: Sequence[str],
                  blend: float = 0.0) -> np.ndarray:
    """A score per candidate (higher first), in the candidates' given order."""
    n = len(titles)
    if n <= 1:
        return np.zeros(n)
    letters = list(LETTERS[:n])
    forward = list(range(n))
    backward = forward[::-1]
    prompts = [rerank_prompt(history, [titles[i] for i in order]) for order in (forward, backward)]
    logp = model.letter_logprobs(prompts, letters)  # (2, n), by letter position
    scores = np.zeros(n)
    for row, order in enumerate((forward, backward)):
        for position, candidate in enumerate(order):
            scores[candidate] += logp[row, position] / 2
    return scores + blend * -np.log1p(np.arange(n))


def rerank(model: LanguageModel, history: Sequence[Step], candidates: Sequence[tuple[str, str]],
           blend: float = 0.0) -> list[str]:
    """(item_id, title) candidates in retrieval order -> item ids in the model's order."""
    scores = rerank_scores(model, history, [title for _, title in candidates], blend)
    order = np.lexsort((np.arange(len(candidates)), -scores))
    return [candidates[i][0] for i in order]
