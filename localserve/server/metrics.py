"""Prometheus metrics, in a registry per app (tests make many apps in one process)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from localserve.runtime.protocol import DoneEvent
    from localserve.scheduler.scheduler import Scheduler

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self, scheduler: Scheduler) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "localserve_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "localserve_prompt_tokens", "Prompt tokens of finished requests", registry=r
        )
        self.generated_tokens = Counter(
            "localserve_generated_tokens", "Tokens generated", registry=r
        )
        self.prefix_hits = Counter(
            "localserve_prefix_cache_hits",
            "Requests that reused a cached prompt prefix",
            registry=r,
        )
        self.prefix_tokens = Counter(
            "localserve_prefix_cache_tokens",
            "Prompt tokens served from the prefix cache",
            registry=r,
        )
        self.draft_tokens = Counter(
            "localserve_draft_tokens",
            "Speculative tokens drafted for verification",
            registry=r,
        )
        self.draft_accepted = Counter(
            "localserve_draft_accepted_tokens",
            "Speculative tokens the sampler accepted (each saved a decode step)",
            registry=r,
        )
        self.ttft = Histogram(
            "localserve_time_to_first_token_seconds",
            "Time from request to first generated text",
            buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.load_seconds = Histogram(
            "localserve_model_load_seconds",
            "Model load durations",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        queue = Gauge("localserve_queue_depth", "Requests waiting for a slot", registry=r)
        queue.set_function(lambda: float(scheduler.waiting()))
        busy = Gauge("localserve_busy_slots", "Sequences being decoded", registry=r)
        busy.set_function(lambda: float(scheduler.busy_slots()))
        loaded = Gauge("localserve_loaded_models", "Models resident", registry=r)
        loaded.set_function(lambda: float(len(scheduler.running())))

    def record_done(self, done: DoneEvent) -> None:
        self.prompt_tokens.inc(done.prompt_eval_count)
        self.generated_tokens.inc(done.eval_count)
        if done.prompt_cached:
            self.prefix_hits.inc()
            self.prefix_tokens.inc(done.prompt_cached)
        if done.draft_count:
            self.draft_tokens.inc(done.draft_count)
            self.draft_accepted.inc(done.draft_accepted)
        if done.load_duration:
            self.load_seconds.observe(done.load_duration / 1e9)

    def render(self) -> bytes:
        return generate_latest(self.registry)
