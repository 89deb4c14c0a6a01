"""Prometheus metrics of one server (its own registry, so two apps in one process never mix counts)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("mullama_requests", "HTTP requests answered", ["route", "status"],
                                registry=self.registry)
        self.latency = Histogram("mullama_request_seconds", "Time from request to the last byte of the answer",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.first_token = Histogram("mullama_time_to_first_token_seconds", "Time from request to the first "
                                     "streamed text", buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("mullama_batch_size", "Requests generated together in one generate() call",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.tokens = Counter("mullama_tokens", "Tokens read (prompt) and written (completion)", ["kind"],
                              registry=self.registry)
        self.in_flight = Gauge("mullama_generations_in_flight", "Chat requests admitted: queued or generating",
                               registry=self.registry)
        self.cancelled = Counter("mullama_generations_cancelled", "Chat requests whose client left before the end",
                                 registry=self.registry)
