"""Any OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp server, Ollama, a
hosted API): KAIROS_LLM_BASE_URL, KAIROS_LLM_MODEL, KAIROS_LLM_API_KEY.

Letters are scored from the `top_logprobs` of the first answer token where the endpoint
returns them; a letter outside them gets the lowest returned log-probability less a
margin; an endpoint without log-probabilities gives its chosen letter all the mass.
Titles cannot be constrained remotely, so the model's lines are matched against the
catalogue and only titles that exist are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np

from kairos.llm.backend import Messages, ModelUnavailable
from kairos.llm.titles import TitleTrie

MISSING_MARGIN = 5.0  # nats below the lowest returned letter, for a letter not returned
TOP_LOGPROBS = 20


def _normalise(title: str) -> str:
    return " ".join(title.casefold().strip(" \t\"'*-.0123456789)").split())


class OpenAICompatibleModel:
    def __init__(self, base_url: str, model: str, api_key: str = "", timeout_s: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        if not base_url or not model:
            raise ModelUnavailable("KAIROS_LLM=openai needs KAIROS_LLM_BASE_URL and KAIROS_LLM_MODEL")
        self.name = f"openai:{model}"
        self.model = model
        self._known: tuple[TitleTrie, dict[str, str]] | None = None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s,
                                    transport=transport)

    def close(self) -> None:
        self._client.close()

    def _chat(self, messages: Messages, **options: Any) -> dict[str, Any]:
        try:
            response = self._client.post("/chat/completions", json={"model": self.model, "messages": messages,
                                                                     "temperature": 0, **options})
            response.raise_for_status()
            return response.json()
        except (httpx.HTTPError, ValueError) as error:
            raise ModelUnavailable(f"{self.name}: {error}") from error

    def letter_logprobs(self, prompts: Sequence[Messages], letters: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(prompts), len(letters)))
        for row, messages in enumerate(prompts):
            body = self._chat(messages, max_tokens=1, logprobs=True, top_logprobs=TOP_LOGPROBS)
            choice = body["choices"][0]
            content = ((choice.get("logprobs") or {}).get("content") or [])
            found: dict[str, float] = {}
            if content:
                for entry in content[0].get("top_logprobs") or [{"token": content[0]["token"],
                                                                  "logprob": content[0]["logprob"]}]:
                    token = entry["token"].strip()
                    found[token] = max(found.get(token, -np.inf), float(entry["logprob"]))
            else:  # no log-probabilities: the chosen letter gets all the mass
                said = (choice.get("message") or {}).get("content", "").strip()[:1]
                found = {said: 0.0}
            floor = min(found.values(), default=0.0) - MISSING_MARGIN
            raw = np.array([found.get(letter, floor) for letter in letters])
            out[row] = raw - np.logaddexp.reduce(raw)
        return out

    def write(self, prompt: Messages, max_tokens: int) -> str:
        body = self._chat(prompt, max_tokens=max_tokens)
        return (body["choices"][0].get("message") or {}).get("content") or ""

    def generate_titles(self, prompt: Messages, trie: TitleTrie, n: int) -> list[str]:
        ask = [*prompt[:-1], {"role": "user", "content": prompt[-1]["content"].replace(
            "the exact title of one item.", f"the exact titles of {n} items, one per line, likeliest first.")}]
        body = self._chat(ask, max_tokens=48 * n)
        text = (body["choices"][0].get("message") or {}).get("content") or ""
        if self._known is None or self._known[0] is not trie:
            self._known = (trie, {_normalise(title): title for title in trie.all})
        known = self._known[1]
        out: list[str] = []
        for line in text.splitlines():
            title = known.get(_normalise(line))
            if title is not None and title not in out:
                out.append(title)
        return out[:n]
