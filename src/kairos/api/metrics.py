"""Prometheus metrics: request counts and latencies, events ingested, catalogue size."""

from __future__ import annotations

import time
import uuid
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

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)


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
