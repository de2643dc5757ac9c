"""What each dashboard page shows, read from the running service (never written).

Each function takes the parts it reads and returns plain data for its template; the
pages (routes.py) only render. None of them writes: a dashboard open all day changes
nothing the service serves.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from kairos.engine import Engine
    from kairos.experiments.service import ExperimentService
    from kairos.pseudonyms import Pseudonyms
    from kairos.push.service import PushService
    from kairos.training.background import ModelManager

TRENDING = 10


class RequestTimes(Protocol):
    def latency_ms(self, window_s: float) -> dict[str, float | int | None]: ...

    @property
    def requests(self) -> int: ...


def live(engine: Engine, times: RequestTimes) -> dict[str, Any]:
    """One sample for the live chart: counters (the page derives rates from two samples)
    and request latency over the last 10 seconds."""
    stats = engine.stats()
    return {"t": time.time(), "events": stats["events"], "requests": times.requests,
            "items": stats["items"], "users": stats["users"], **times.latency_ms(10.0)}


def overview(engine: Engine, push: PushService | None, leader: bool) -> dict[str, Any]:
    stats = engine.stats()
    return {"stats": stats, "leader": leader, "trending": trending(engine),
            "push": None if push is None else {"by_status": push.outbox.counts()["by_status"]}}


def trending(engine: Engine, n: int = TRENDING) -> list[dict[str, Any]]:
    """The popularity source's top items (what a stranger is shown first), with titles."""
    source = engine.sources.get("popular")
    if source is None:
        return []
    found = source.candidates(engine.user_context("", exclude_seen=False), n)
    catalog = engine.catalog
    return [{"item_id": catalog.ids[i], "title": catalog.titles[i], "score": round(float(s), 3)}
            for i, s in zip(found.items, found.scores, strict=True)]


def user_page(engine: Engine, push: PushService | None, ids: Pseudonyms, user_id: str) -> dict[str, Any]:
    """A user's profile and recent sequence, the list they are served now (sources and
    reasons), their notifications and push preferences."""
    kept = ids.user(user_id)
    profile = engine.get_user(kept, recent=30)
    served = engine.recommend(kept, 10)
    return {"user_id": user_id, "profile": profile, "recommendations": served,
            "notifications": push.notifications(kept, None, 30) if push is not None else None,
            "preferences": push.get_preferences(kept) if push is not None else None}


def models_page(models: ModelManager, engine: Engine, reports: Path) -> dict[str, Any]:
    status = models.status()
    registered = engine.registered
    history = registered.model.metrics.get("history", []) if registered is not None else []
    return {"status": status, "history": history, "reports": evaluation_reports(reports)}


@dataclass
class Report:
    name: str
    date: str
    summary: str
    plots: list[str]


def evaluation_reports(root: Path, limit: int = 10) -> list[Report]:
    """`kairos evaluate --out <root>/<name>` folders, newest first: report.md and plots."""
    if not root.is_dir():
        return []
    found = []
    for results in root.glob("*/results.json"):
        folder = results.parent
        try:
            date = str(json.loads(results.read_text()).get("date", ""))
        except (OSError, ValueError):
            continue
        report = folder / "report.md"
        found.append(Report(folder.name, date, report.read_text() if report.exists() else "",
                            sorted(p.name for p in folder.glob("*.png"))))
    return sorted(found, key=lambda r: r.date, reverse=True)[:limit]


def push_page(push: PushService) -> dict[str, Any]:
    """Campaigns, the delivery funnel, why notifications were not sent, what failed."""
    stats = push.stats()
    by_status = stats["by_status"]
    decided = sum(by_status.values())
    funnel = [("decided", decided), ("not suppressed", decided - by_status.get("suppressed", 0)),
              ("delivered", by_status.get("delivered", 0)), ("opened", stats["opened"]),
              ("clicked", stats["clicked"])]
    return {"stats": stats, "funnel": funnel, "campaigns": push.campaigns(20),
            "failures": push.outbox.latest(("failed", "dead"), 20)}


def experiments_page(experiments: ExperimentService) -> dict[str, Any]:
    listed = experiments.list()
    return {"experiments": [experiments.report(e["id"]) for e in listed[:10]]}
