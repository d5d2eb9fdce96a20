"""Prometheus metrics for the server: requests by route and status, tokens in and out, time to
first token, request latency and sequences in flight.

Each app has its own ``CollectorRegistry`` (no process-wide state), so tests and several apps in
one process never mix their counts. Requests are counted by an ASGI middleware that sees the
status of every response, errors included, and times a streamed response to its last byte."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Seconds; a 2-core CPU answers in tenths of a second to minutes.
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "cuvee_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "cuvee_request_duration_seconds",
            "time from request to the response's last byte, by route",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "cuvee_prompt_tokens", "prompt tokens processed, by model", ["model"], registry=r
        )
        self.completion_tokens = Counter(
            "cuvee_completion_tokens", "tokens generated, by model", ["model"], registry=r
        )
        self.target_up = Gauge(
            "cuvee_gateway_target_up",
            "1 while a gateway target is in use, 0 while it is cooled down after failures",
            ["target"],
            registry=r,
        )
        self.target_failures = Counter(
            "cuvee_gateway_target_failures",
            "gateway targets' failures that sent a request on to the next target",
            ["target"],
            registry=r,
        )
        self.ttft = Histogram(
            "cuvee_time_to_first_token_seconds",
            "time from request to its first generated token, by model",
            ["model"],
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.active = Gauge(
            "cuvee_active_sequences",
            "sequences submitted to an engine and not finished, by model",
            ["model"],
            registry=r,
        )
        self.cancelled = Counter(
            "cuvee_cancelled_sequences",
            "sequences cancelled before they finished (the client went away), by model",
            ["model"],
            registry=r,
        )
        self.loaded = Gauge("cuvee_loaded_models", "engines loaded in memory", registry=r)

    def track_loaded(self, count: Callable[[], int]) -> None:
        self.loaded.set_function(count)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample's current value (0 when absent): for tests and health summaries."""
        found = self.registry.get_sample_value(name, labels or {})
        return 0.0 if found is None else found


class MetricsMiddleware:
    """Counts every HTTP request by its route template (``/v1/models/{model_id}``, never the raw
    path, so the label set stays small) and final status, and times it."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def counting_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            route = scope.get("route")
            # the template without converters: "/v1/models/{model_id}", not "...:path}"
            label = getattr(route, "path_format", None) or "unmatched"
            self.metrics.requests.labels(label, str(status["code"])).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - start)
