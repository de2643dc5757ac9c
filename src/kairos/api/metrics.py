"""Prometheus metrics: request counts and latencies, events ingested, catalogue size."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from kairos.engine import Engine


disable_created_metrics()  # *_created series only add noise to scrapes


class ApiMetrics:
    """One registry per app, so several apps (tests) never share counters."""

    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "kairos_http_requests_total", "HTTP requests", ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "kairos_http_request_duration_seconds", "HTTP request latency", ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=self.registry,
        )
        self.events = Counter(
            "kairos_events_ingested_total", "Events acknowledged through the API", ["type"],
            registry=self.registry,
        )
        self.registry.register(_EngineCollector(engine))

    async def middleware(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            # The route template, not the raw path: ids must not explode label cardinality.
            name = getattr(route, "path", "unmatched")
            self.requests.labels(request.method, name, str(status)).inc()
            self.latency.labels(request.method, name).observe(time.perf_counter() - started)


class _EngineCollector(Collector):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self.engine.stats()
        for key in ("items", "available_items", "users", "events"):
            yield GaugeMetricFamily(f"kairos_{key}", f"Current number of {key.replace('_', ' ')}",
                                    value=stats[key])
