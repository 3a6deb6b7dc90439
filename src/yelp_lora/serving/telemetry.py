"""The service's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ServiceMetrics:
    """Prometheus metrics in a registry of their own (several apps may live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "yelp_lora_http_requests", "HTTP requests answered", ["method", "path", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "yelp_lora_http_request_seconds", "HTTP request latency", ["method", "path"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.errors = Counter("yelp_lora_errors", "Error answers by code", ["code"], registry=self.registry)
        self.batch_texts = Histogram(
            "yelp_lora_batch_texts", "Texts per model batch (after micro-batching)", registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.batch_requests = Histogram(
            "yelp_lora_batch_requests", "Requests merged into one model batch", registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64),
        )
        self.batch_seconds = Histogram(
            "yelp_lora_batch_seconds", "Model time per batch", registry=self.registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.texts = Counter("yelp_lora_texts_classified", "Review texts classified", registry=self.registry)
        self.queued_texts = Gauge("yelp_lora_queued_texts", "Texts waiting for the model", registry=self.registry)
        self.dropped = Counter(
            "yelp_lora_jobs_dropped", "Requests the worker did not run: queue_full, expired (past their deadline), "
            "abandoned (the client went away)", ["reason"], registry=self.registry,
        )
        self.worker_errors = Counter(
            "yelp_lora_worker_errors", "Unexpected exceptions caught in the model worker's loop", registry=self.registry
        )
