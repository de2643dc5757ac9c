"""Policy replay (`--protocol push-replay`): the stream after the cut, in time order,
through the push pipeline's own trigger rule and policy code.

The engine holds the events before the cut (and the behaviour model trained on them,
where the served fusion reads it). Then each event is ingested as it happens, and as
in the service a user's `next_best` timer is (re)armed at their event + the session
gap. When simulated time reaches a timer, the user's top recommendation is proposed
with its served p, and `Policy.decide` (caps per local day and week, per type, the
minimum gap, quiet hours in the user's zone, fatigue, the hourly budget) says whether
and when it goes out. A send is a hit if the user takes that item within 24 hours of
it; a hit counts as a click (so fatigue sees it), a miss as ignored.

Each user gets a time zone drawn, fixed by the seed, from ZONES (the datasets carry
none). An independent check counts, over everything sent, the notifications beyond a
user's daily cap and those inside their quiet hours: both must be 0.

Strategies: `kairos` (the served list and p, with the policy); `popular` (the most
popular item the user has not seen, same trigger and policy); `no-policy` (the top
recommendation at every timer, no rule applied).

At the same number of sends: p says whether to notify at all, so `kairos` is also
reported with only its sends of highest p, as many as `popular` made (the threshold
`min_p` that gives that volume; a subset of a schedule the policy allowed is one it
allows), with a paired bootstrap over users of the precision ratio.
"""

from __future__ import annotations

import heapq
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kairos.clock import SimulatedClock
from kairos.config import DAY, Settings
from kairos.engine import Engine
from kairos.evaluation.data import EvalData
from kairos.evaluation.protocols import train_sequential_for, training_report, uses_sequential
from kairos.evaluation.replay import _engine_at_cut, _is_choice, cut_time
from kairos.progress import progress
from kairos.store import EventRecord

STRATEGIES = ("kairos", "popular", "no-policy")
ZONES = ("UTC", "Europe/London", "Europe/Berlin", "America/New_York", "America/Los_Angeles", "Asia/Tokyo",
         "Asia/Kolkata", "Australia/Sydney")
HIT_WINDOW_S = DAY


@dataclass
class Send:
    user_id: str
    item_id: str
    at: float
    p: float = 0.0  # the served p (0 where the strategy has none)
    taken_at: float | None = None  # when the user took the item, within HIT_WINDOW_S of the send

    @property
    def hit(self) -> bool:
        return self.taken_at is not None


@dataclass
class PolicyReplayResult:
    dataset: str
    cut: float
    events: int
    users: int
    days: float
    strategies: dict[str, dict[str, Any]] = field(default_factory=dict)
    matched: dict[str, Any] = field(default_factory=dict)  # kairos at popular's volume vs popular
    sequential: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"protocol": "push-replay", "dataset": self.dataset, "cut": self.cut, "events": self.events,
                "users": self.users, "days": self.days, "strategies": self.strategies, "matched": self.matched,
                "sequential_model": self.sequential, "notes": self.notes}


def push_replay(data: EvalData, strategies: list[str], cut_fraction: float = 0.8, max_events: int | None = None,
                seed: int = 0, quiet: bool = False, sequential: dict[str, Any] | None = None) -> PolicyReplayResult:
    unknown = set(strategies) - set(STRATEGIES)
    if unknown:
        raise ValueError(f"unknown push-replay strategies {sorted(unknown)}; known: {', '.join(STRATEGIES)}")
    cut = cut_time(data.events, cut_fraction)
    stream = [e for e in data.events if e.timestamp >= cut]
    if max_events is not None:
        stream = stream[:max_events]
    users = sorted({e.user_id for e in stream})
    rng = np.random.default_rng(seed)
    zones = {u: ZONES[i] for u, i in zip(users, rng.integers(0, len(ZONES), len(users)).tolist(), strict=True)}
    days = max((stream[-1].timestamp - stream[0].timestamp) / DAY, 1.0) if stream else 1.0
    result = PolicyReplayResult(data.name, cut, len(stream), len(users), round(days, 1))
    if data.synthetic_time:
        result.notes.append("synthetic timestamps (one day apart per user): send times and quiet hours are "
                            "simulated on them")
    engaged = _engaged_days(stream, zones)
    sent: dict[str, list[Send]] = {}
    for name in strategies:
        with tempfile.TemporaryDirectory(prefix="kairos-push-replay-") as scratch:
            engine, _ = _engine_at_cut(data, cut, scratch, decay=True)
            try:
                if uses_sequential(["kairos"], engine.settings):
                    key = ("push-replay", data.name, data.fingerprint(), str(cut_fraction))
                    result.sequential = training_report(train_sequential_for(engine, key, sequential, quiet))
                sends = sent[name] = _run(engine, name, stream, zones, quiet)
            finally:
                engine.close()
        result.strategies[name] = _report(sends, _preferences(engine.settings, zones), zones, len(users), days,
                                          engaged)
    if "kairos" in sent and "popular" in sent and sent["popular"]:
        volume = len(sent["popular"])
        top = sorted(sent["kairos"], key=lambda s: -s.p)[:volume]
        result.strategies["kairos@popular-volume"] = _report(top, _preferences(engine.settings, zones), zones,
                                                              len(users), days, engaged)
        result.matched = {"sends": len(top), "min_p": top[-1].p if top else None,
                          **_paired_precision(top, sent["popular"], users, rng)}
    return result


def _paired_precision(ours: list[Send], theirs: list[Send], users: list[str], rng: np.random.Generator,
                      draws: int = 1000) -> dict[str, float]:
    """precision(ours) / precision(theirs), with a 95% interval from resampling users."""
    index = {u: i for i, u in enumerate(users)}

    def per_user(sends: list[Send]) -> tuple[np.ndarray, np.ndarray]:
        n, hits = np.zeros(len(users)), np.zeros(len(users))
        for send in sends:
            n[index[send.user_id]] += 1
            hits[index[send.user_id]] += send.hit
        return n, hits

    (n_a, h_a), (n_b, h_b) = per_user(ours), per_user(theirs)
    sample = rng.integers(0, len(users), size=(draws, len(users)))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (h_a[sample].sum(1) / n_a[sample].sum(1)) / (h_b[sample].sum(1) / n_b[sample].sum(1))
    ratio = ratio[np.isfinite(ratio)]
    ours_p, theirs_p = h_a.sum() / max(1, n_a.sum()), h_b.sum() / max(1, n_b.sum())
    low, high = np.percentile(ratio, [2.5, 97.5]) if len(ratio) else (float("nan"), float("nan"))
    return {"precision": float(ours_p), "popular_precision": float(theirs_p),
            "ratio": float(ours_p / theirs_p) if theirs_p else float("inf"), "low": float(low), "high": float(high)}


def _run(engine: Engine, strategy: str, stream: list[EventRecord], zones: dict[str, str],
         quiet: bool) -> list[Send]:
    from kairos.push.calibration import DEFAULT, fit_calibration
    from kairos.push.config import NextBestConfig
    from kairos.push.engine_view import EngineView
    from kairos.push.policy import Budget, Candidate, Past, Policy
    from kairos.push.targeting import Targeter
    from kairos.push.user_vectors import UserVectors

    clock = engine.clock
    assert isinstance(clock, SimulatedClock)
    settings, config = engine.settings, NextBestConfig()
    view = EngineView(engine)
    vectors = UserVectors(view)
    vectors.mark_all()
    vectors.refresh()
    calibrator = DEFAULT
    if strategy != "no-policy":
        try:  # fitted on the events before the cut alone, as `kairos push calibrate` would
            calibrator = fit_calibration(engine.store, settings, None, quiet=quiet)
        except ValueError:
            pass  # too little before the cut: the hand-set prior
    targeter = Targeter(view, vectors, calibrator)
    policy = Policy(settings)
    preferences = _preferences(settings, zones)
    history: dict[str, list[Past]] = defaultdict(list)
    budget = Budget(settings.push_max_per_hour, lambda hour: 0)  # it counts what it grants itself
    timers: list[tuple[float, str]] = []  # (due, user) heap; stale entries skipped
    armed: dict[str, float] = {}
    sends: list[Send] = []
    open_sends: dict[tuple[str, str], list[Send]] = defaultdict(list)

    def fire(due: float, user_id: str) -> None:
        clock.set(max(clock.now(), due))
        vectors.mark([user_id])
        if strategy == "popular":
            ctx = engine.user_context(user_id, exclude_seen=True)
            scores = np.where(ctx.allowed, engine.state.popularity.item_scores(len(engine.catalog), due), -np.inf)
            if not np.isfinite(scores.max()):
                return
            item_id = engine.catalog.ids[int(np.argmax(scores))]
        else:
            recommended = engine.recommend(user_id, 1).items
            if not recommended:
                return
            item_id = recommended[0].item_id
        p = 0.0
        if strategy == "no-policy":
            at = due
        else:
            p = targeter.score_items(user_id, [item_id])[0]
            candidate = Candidate(user_id, item_id, "next_best", p, 0.0, due, due + config.expires_s)
            decision = policy.decide(candidate, preferences[user_id], history[user_id], due,
                                     lambda channels: channels[0] if channels else None, budget)
            if decision.status != "scheduled":
                return
            at = decision.due_at
            history[user_id].append(Past(at, "next_best", item_id, "delivered", delivered_at=at))
        send = Send(user_id, item_id, at, p)
        sends.append(send)
        open_sends[(user_id, item_id)].append(send)

    with progress(f"push replay {strategy}", len(stream), quiet=quiet) as advance:
        for event in stream:
            while timers and timers[0][0] <= event.timestamp:
                due, user_id = heapq.heappop(timers)
                if armed.get(user_id) == due:
                    del armed[user_id]
                    fire(due, user_id)
            clock.set(max(clock.now(), event.timestamp))
            if _is_choice(event):
                for send in open_sends.get((event.user_id, event.item_id), []):
                    if send.at < event.timestamp <= send.at + HIT_WINDOW_S and not send.hit:
                        send.taken_at = event.timestamp
                        for past in history[event.user_id]:
                            if past.item_id == event.item_id and past.due_at == send.at:
                                past.opened_at = past.clicked_at = event.timestamp
            engine.ingest_records([event])
            vectors.mark([event.user_id])
            due = event.timestamp + config.session_gap_s
            armed[event.user_id] = due
            heapq.heappush(timers, (due, event.user_id))
            advance(1)
    return sends


def _engaged_days(stream: list[EventRecord], zones: dict[str, str]) -> set[tuple[str, Any]]:
    """(user, local day) pairs in which the user took an item."""
    from kairos.push.policy import local

    return {(e.user_id, local(e.timestamp, zones[e.user_id]).date()) for e in stream
            if _is_choice(e)}


def _preferences(settings: Settings, zones: dict[str, str]) -> dict[str, Any]:
    """Each user's effective preferences: the service defaults in their drawn zone."""
    from kairos.push.preferences import effective_preferences
    from kairos.push.schema import PushPreferences

    return {u: effective_preferences(settings, u, PushPreferences(timezone=tz)) for u, tz in zones.items()}


def _report(sends: list[Send], preferences: dict[str, Any], zones: dict[str, str], users: int, days: float,
            engaged: set[tuple[str, Any]]) -> dict[str, Any]:
    from kairos.push.policy import local, quiet_until

    per_day: dict[tuple[str, Any], int] = defaultdict(int)
    quiet = cap = 0
    hit_days = set()
    for send in sends:
        mine = preferences[send.user_id]
        day = local(send.at, zones[send.user_id]).date()
        per_day[(send.user_id, day)] += 1
        if per_day[(send.user_id, day)] > mine.max_per_day:
            cap += 1
        if quiet_until(send.at, mine) is not None:
            quiet += 1
        if send.taken_at is not None:
            hit_days.add((send.user_id, local(send.taken_at, zones[send.user_id]).date()))
    hits = sum(1 for s in sends if s.hit)
    return {"sends": len(sends), "hits": hits, "precision": hits / len(sends) if sends else 0.0,
            "sends_per_user_per_day": len(sends) / max(1, users) / days,
            "recall_of_engaged_days": len(hit_days & engaged) / len(engaged) if engaged else 0.0,
            "cap_violations": cap, "quiet_hour_violations": quiet}
