"""Prometheus metrics: request counts and latencies, events ingested, catalogue size."""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Iterator
from datetime import datetime

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kairos.engine import Engine

disable_created_metrics()  # *_created series only add noise to scrapes


class RequestTimes:
    """The latest API requests' durations, for the dashboard's live latency (this process)."""

    def __init__(self, kept: int = 4096) -> None:
        self._recent: deque[tuple[float, float]] = deque(maxlen=kept)  # (monotonic end, seconds)
        self.requests = 0

    def record(self, seconds: float) -> None:
        self._recent.append((time.monotonic(), seconds))
        self.requests += 1

    def latency_ms(self, window_s: float) -> dict[str, float | int | None]:
        since = time.monotonic() - window_s
        durations = sorted(s for t, s in list(self._recent) if t >= since)
        if not durations:
            return {"p50_ms": None, "p99_ms": None, "n": 0}
        def at(q: float) -> float:
            return round(1000 * durations[min(len(durations) - 1, int(q * len(durations)))], 2)
        return {"p50_ms": at(0.5), "p99_ms": at(0.99), "n": len(durations)}


class ApiMetrics:
    """One registry per app, so several apps (tests) never share counters."""

    def __init__(self, engine: Engine) -> None:
        self.times = RequestTimes()
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

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)
        if route.startswith("/v1/") and not route.endswith("/stream"):  # the API, not pages or streams
            self.times.record(seconds)


class RequestMiddleware:
    """Pure ASGI (BaseHTTPMiddleware costs a task and a queue per request): assigns the
    request id (X-Request-ID, echoed back) and records metrics by route template."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), None)
        request_id = request_id or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            # The route template, not the raw path: ids must not explode label cardinality.
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe(scope["method"], route, status, time.perf_counter() - started)


class _EngineCollector(Collector):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self.engine.stats()
        for key in ("items", "available_items", "users", "events"):
            yield GaugeMetricFamily(f"kairos_{key}", f"Current number of {key.replace('_', ' ')}",
                                    value=stats[key])
        served = GaugeMetricFamily("kairos_model_info", "The model version serving (value 1)",
                                   labels=["model_version"])
        served.add_metric([stats["model_version"]], 1.0)
        yield served
        registered = self.engine.registered
        if registered is not None:
            yield GaugeMetricFamily("kairos_sequential_model_created_seconds",
                                    "When the served behaviour model was trained (epoch seconds)",
                                    value=datetime.fromisoformat(registered.model.created_at).timestamp())
