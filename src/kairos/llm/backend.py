"""What every language-model backend does: score the letters at an answer position,
and write text (optionally only text that spells a catalogue title)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from kairos.llm.titles import TitleTrie

Messages = list[dict[str, str]]  # chat messages: {"role": "system"|"user"|"assistant", "content": ...}


class LanguageModel(Protocol):
    name: str  # e.g. "local:SmolLM2-135M-Instruct.Q4_1" or "openai:gpt-4o-mini"

    def letter_logprobs(self, prompts: Sequence[Messages], letters: Sequence[str]) -> np.ndarray:
        """(len(prompts), len(letters)): the log-probability of each letter as the first
        token of the assistant's answer, renormalised over `letters`."""
        ...

    def generate_titles(self, prompt: Messages, trie: TitleTrie, n: int) -> list[str]:
        """Up to `n` distinct catalogue titles the model writes as its answer, likeliest
        first; every one is in `trie`."""
        ...

    def write(self, prompt: Messages, max_tokens: int) -> str:
        """The model's free answer (greedy), at most `max_tokens` tokens."""
        ...


class ModelUnavailable(RuntimeError):
    """The configured model cannot be loaded or reached (the caller falls back)."""
