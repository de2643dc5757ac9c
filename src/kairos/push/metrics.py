"""Prometheus metrics of push, registered in the API's registry."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kairos.push.outbox import NewNotification, Outcome
from kairos.push.schema import Notification

if TYPE_CHECKING:
    from kairos.push.outbox import Outbox


class PushMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.decisions = Counter("kairos_push_notifications_total", "Notifications decided, by type and status",
                                 ["type", "status"], registry=registry)
        self.suppressed = Counter("kairos_push_suppressed_total", "Notifications not sent, by reason",
                                  ["reason"], registry=registry)
        self.decision_seconds = Histogram(
            "kairos_push_decision_seconds", "From a due trigger to its notifications in the outbox", ["trigger"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=registry)
        self.deliveries = Counter("kairos_push_deliveries_total", "Delivery attempts by channel and result",
                                  ["channel", "result"], registry=registry)
        self.delivery_delay = Histogram(
            "kairos_push_delivery_delay_seconds", "From due to delivered", ["channel"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300), registry=registry)

    def decided(self, trigger: str, rows: Sequence[NewNotification], seconds: float) -> None:
        self.decision_seconds.labels(trigger).observe(seconds)
        for row in rows:
            self.decisions.labels(row.type, row.status).inc()
            if row.status != "scheduled":
                self.suppressed.labels(row.suppressed_reason or row.status).inc()

    def delivered(self, batch: Sequence[Notification], outcomes: Sequence[Outcome], now: float) -> None:
        by_id = {n.notification_id: n for n in batch}
        for outcome in outcomes:
            notification = by_id.get(outcome.id)
            channel = (notification.channel if notification else None) or "unknown"
            self.deliveries.labels(channel, outcome.result).inc()
            if outcome.result == "delivered" and notification is not None:
                self.delivery_delay.labels(channel).observe(max(0.0, now - notification.due_at))


class OutboxCollector(Collector):
    """Outbox rows by status, read at scrape time."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("kairos_push_outbox", "Notifications in the outbox by status", labels=["status"])
        for status, count in self.outbox.counts()["by_status"].items():
            family.add_metric([status], count)
        yield family
