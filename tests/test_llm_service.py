"""The model on the serving path: lists computed off the request path, served only while
fresh for the user's latest event, a request never waiting, and no model meaning no change."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from kairos.clock import SimulatedClock
from kairos.config import Settings
from kairos.engine import Engine
from kairos.llm.backend import Messages, ModelUnavailable
from kairos.llm.service import LlmService
from kairos.llm.titles import TitleTrie
from kairos.schema import Item
from kairos.store import EventRecord

TITLES = [f"Film {i}" for i in range(12)]


class Favourite:
    """Ranks the candidate titled 'Film 11' first wherever it is, and writes 'Film 7'
    then 'Film 3'; `gate` (when set) holds every call until released."""

    name = "fake:favourite"

    def __init__(self) -> None:
        self.gate: threading.Event | None = None
        self.calls = 0

    def _wait(self) -> None:
        self.calls += 1
        if self.gate is not None:
            assert self.gate.wait(30)

    def letter_logprobs(self, prompts: Sequence[Messages], letters: Sequence[str]) -> np.ndarray:
        self._wait()
        rows = []
        for messages in prompts:
            lines = [x for x in messages[-1]["content"].splitlines() if x[:2] in {f"{c}." for c in letters}]
            raw = np.array([5.0 if x.endswith("Film 11") else 0.0 for x in lines])
            rows.append(raw - np.logaddexp.reduce(raw))
        return np.array(rows)

    def generate_titles(self, prompt: Messages, trie: TitleTrie, n: int) -> list[str]:
        self._wait()
        return [t for t in ("Film 7", "Film 3") if t in trie.all][:n]


def make_engine(db_path: Path) -> Engine:
    settings = Settings(db_path=db_path, semantic_enabled=False, sqlite_synchronous="NORMAL",
                        source_weights={"covisit": 1.0, "popular": 0.3})
    engine = Engine(settings, clock=SimulatedClock(1_000_000.0))
    engine.upsert_items([Item(item_id=f"m{i}", title=t) for i, t in enumerate(TITLES)])
    # Film 11 is the least popular: without the model it is never first.
    engine.ingest_records([EventRecord(f"other{u}", f"m{i}", "click", 999_000.0 + u)
                           for u in range(5) for i in range(11)])
    engine.ingest_records([EventRecord("fan", "m11", "click", 999_500.0)])
    return engine


@pytest.fixture()
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(tmp_path / "llm.db")
    yield engine
    engine.close()


def wait_until(check, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_rerank_serves_the_models_order_only_while_fresh_for_the_latest_event(engine: Engine) -> None:
    model = Favourite()
    ready: list[str] = []
    service = LlmService(engine, on_ready=ready.append, model=model, mode="rerank")
    service.start()
    try:
        before = engine.recommend("u1", 5)
        assert before.items[0].item_id != "m11" and "llm" not in before.items[0].sources
        engine.ingest_records([EventRecord("u1", "m0", "click", 1_000_000.0)])
        wait_until(lambda: "u1" in ready)
        served = engine.recommend("u1", 5)
        assert served.items[0].item_id == "m11" and served.items[0].sources[-1] == "llm"
        assert served.items[0].reason  # still a reason from the strongest real source
        # A newer event: the cached list is stale until the model has read that event too.
        model.gate = threading.Event()
        engine.ingest_records([EventRecord("u1", "m1", "click", 1_000_001.0)])
        stale = engine.recommend("u1", 5)
        assert "llm" not in {s for item in stale.items for s in item.sources}
        model.gate.set()
        wait_until(lambda: ready.count("u1") == 2)
        assert engine.recommend("u1", 5).items[0].item_id == "m11"
        status = service.status()
        assert status["state"] == "ready" and status["computed"] >= 2 and status["event_to_list_ms"]["p50"] > 0
    finally:
        if model.gate is not None:
            model.gate.set()
        service.stop()
    assert engine.list_rules == [] and "llm" not in engine.sources  # stopping leaves the engine as it was


def test_with_redis_a_follower_serves_the_lists_the_leader_computes(engine: Engine, tmp_path: Path,
                                                                     redis_url: str) -> None:
    """Two replicas of one log (here: the same events in two engines); the leader's model
    computes, the follower has no model and serves the leader's list from Redis, only
    while it is fresh for the user's latest event there too."""
    from kairos.llm.shared_cache import SharedLlmListCache

    follower_engine = make_engine(tmp_path / "follower.db")
    ready: list[str] = []
    leader = LlmService(engine, on_ready=ready.append, model=Favourite(), mode="rerank",
                        cache=SharedLlmListCache(redis_url))
    follower = LlmService(follower_engine, mode="rerank", computes=False, cache=SharedLlmListCache(redis_url))
    leader.start()
    follower.start()
    try:
        click = [EventRecord("u1", "m0", "click", 1_000_000.0)]
        follower_engine.ingest_records(click)
        assert "llm" not in {s for item in follower_engine.recommend("u1", 5).items for s in item.sources}
        engine.ingest_records(click)
        wait_until(lambda: "u1" in ready)
        served = follower_engine.recommend("u1", 5)
        assert served.items[0].item_id == "m11" and served.items[0].sources[-1] == "llm"
        assert follower.status()["state"] == "following" and follower.status()["computed"] == 0
        # The follower applies a newer event first: the shared list is stale for it.
        follower_engine.ingest_records([EventRecord("u1", "m1", "click", 1_000_001.0)])
        assert "llm" not in {s for item in follower_engine.recommend("u1", 5).items for s in item.sources}
        follower.user_forgotten("u1")
        assert leader.cache.latest("u1") is None  # forgotten on every node
    finally:
        leader.stop()
        follower.stop()
        follower_engine.close()


def test_a_request_never_waits_for_a_slow_model(engine: Engine) -> None:
    model = Favourite()
    model.gate = threading.Event()  # the model hangs
    service = LlmService(engine, model=model, mode="rerank")
    service.start()
    try:
        engine.ingest_records([EventRecord("u2", "m0", "click", 1_000_000.0)])
        wait_until(lambda: model.calls >= 1)  # the worker is inside the model now
        started = time.perf_counter()
        served = engine.recommend("u2", 5)
        assert time.perf_counter() - started < 1.0 and len(served.items) == 5
        assert service.status()["queue"] == 0 and service.worker.busy
        engine.ingest_records([EventRecord("u3", "m0", "click", 1_000_000.0)] * 3)
        assert service.status()["queue"] == 1  # a burst is one run
    finally:
        model.gate.set()
        service.stop()


def test_generate_mode_adds_the_models_items_as_the_llm_source(engine: Engine) -> None:
    service = LlmService(engine, model=Favourite(), mode="generate")
    service.attach()
    try:
        assert engine.settings.source_weights["llm"] == engine.settings.llm_weight
        engine.ingest_records([EventRecord("u4", "m7", "click", 1_000_000.0)])  # m7 is seen: not served again
        service.refresh("u4")
        served = engine.recommend("u4", 12)
        placed = [item for item in served.items if "llm" in item.sources]
        assert [item.item_id for item in placed] == ["m3"]
        assert "language model" in placed[0].reason or placed[0].sources[0] != "llm"
    finally:
        service.detach()
    assert "llm" not in engine.settings.source_weights


def test_without_a_model_the_service_stays_out_of_the_way(engine: Engine) -> None:
    engine.settings.llm = "openai"  # configured but not reachable
    engine.settings.llm_base_url, engine.settings.llm_model = "http://127.0.0.1:9/v1", "none"
    engine.settings.llm_timeout_s = 1.0
    service = LlmService(engine, mode="rerank")
    try:
        with pytest.raises(ModelUnavailable):
            service.refresh("fan")
        plain = [i.item_id for i in engine.recommend("fan", 5, apply_rules=False).items]
        service.attach()
        assert [i.item_id for i in engine.recommend("fan", 5).items] == plain
    finally:
        service.detach()


def test_grounding_keeps_only_sentences_that_name_real_history_or_the_item() -> None:
    from kairos.llm.words import first_sentence, grounded

    catalogue = ["Heat", "Casino", "Toy Story", "Aladdin", "Up"]
    allowed = ["Casino", "Heat"]  # the item, and the user's history
    assert grounded("Since you watched Heat, Casino's crime story should grip you.", allowed, catalogue)
    assert not grounded("Fans of Toy Story love Casino.", allowed, catalogue)  # not in their history
    assert not grounded("You loved 'The Godfather', so try Casino.", allowed, catalogue)  # invented
    assert grounded("It looks up your street.", allowed, catalogue)  # 'up' is shorter than a mention
    assert not grounded("", allowed, catalogue)
    assert first_sentence("  Great pick. More text here.") == "Great pick."


class Writer(Favourite):
    """Writes a grounded sentence for Film 3 and an invented one for anything else."""

    def write(self, prompt: Messages, max_tokens: int) -> str:
        self._wait()
        text = prompt[-1]["content"]
        if '"Film 3"' in text:
            return "Because you clicked Film 0, Film 3 is next. And more."
        return "You will love 'Film 99: the sequel'."


def test_explanations_are_written_off_the_request_path_and_fall_back_to_templates(engine: Engine) -> None:
    service = LlmService(engine, model=Writer(), mode="rerank")
    service.state = "ready"
    service.explainer.start()
    try:
        engine.ingest_records([EventRecord("u5", "m0", "click", 1_000_000.0)])
        assert service.explanations("u5", ["m3", "m4"]) == {}  # nothing written yet: templates stand
        wait_until(lambda: service.grounded + service.rejected == 2)
        assert service.explanations("u5", ["m3", "m4"]) == {"m3": "Because you clicked Film 0, Film 3 is next."}
        assert service.rejected == 1  # the invented title was refused
        engine.ingest_records([EventRecord("u5", "m1", "click", 1_000_001.0)])
        assert service.explanations("u5", ["m3"]) == {}  # written for an older event: not shown
    finally:
        service.explainer.stop()


def test_notification_copy_is_written_only_when_grounded(engine: Engine) -> None:
    copies: list[tuple[str, str]] = []
    service = LlmService(engine, model=Writer(), mode="rerank", on_copy=lambda nid, text: copies.append((nid, text)))
    service.state = "ready"
    service.explainer.start()
    try:
        engine.ingest_records([EventRecord("u6", "m0", "click", 1_000_000.0)])
        service.write_copy([("n1", "u6", "m3"), ("n2", "u6", "m4")])
        wait_until(lambda: service.grounded + service.rejected == 2)
        assert copies == [("n1", "Because you clicked Film 0, Film 3 is next.")]  # n2 keeps its template
    finally:
        service.explainer.stop()


def test_the_shared_list_cache_keeps_the_newest_list_and_never_blocks_without_redis(redis_url: str) -> None:
    from conftest import free_port

    from kairos.llm.cache import LlmList
    from kairos.llm.shared_cache import SharedLlmListCache

    node_a, node_b = SharedLlmListCache(redis_url), SharedLlmListCache(redis_url)
    node_a.put("alice@example.com", LlmList(3, ("m1", "m2"), "rerank", 1.0, 0.1))
    node_b.put("alice@example.com", LlmList(2, ("m9",), "rerank", 2.0, 0.1))  # computed for an older event
    assert node_b.fresh("alice@example.com", 3) == LlmList(3, ("m1", "m2"), "rerank", 1.0, 0.1)
    assert node_b.fresh("alice@example.com", 4) is None and len(node_a) == 1
    assert not any(b"alice" in key for key in node_a.client.keys("*"))  # user ids never reach Redis
    down = SharedLlmListCache(f"redis://127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    assert down.fresh("alice@example.com", 3) is None
    assert time.monotonic() - started < 2.0
