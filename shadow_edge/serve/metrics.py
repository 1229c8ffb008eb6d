"""Prometheus metrics of one server (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """Requests by model/mode/status, tokens, TTFT, per-step latency, queue depth, batches, escalations,
    speculative drafted/accepted tokens."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("shadow_edge_requests", "finished requests by model, mode and HTTP status "
                                "('cancelled' when the client went away)", ["model", "mode", "status"], registry=r)
        self.tokens = Counter("shadow_edge_generated_tokens", "tokens generated", ["model", "mode"], registry=r)
        self.ttft = Histogram("shadow_edge_time_to_first_token_seconds", "arrival to first token (incl. queueing)",
                              ["model", "mode"], buckets=LATENCY_BUCKETS, registry=r)
        self.token_latency = Histogram("shadow_edge_token_latency_seconds", "wall time of one decode step of a "
                                       "batch (every row gets one token)", ["model", "mode"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("shadow_edge_queue_depth", "requests waiting for a batch", ["model"], registry=r)
        self.batch_size = Histogram("shadow_edge_batch_size", "rows per decode step of a continuous batch (1 per "
                                    "request of a mode that is not batched)", ["model", "mode"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.escalations = Counter("shadow_edge_cascade_escalations", "cascade requests answered by base_shadow",
                                   ["model"], registry=r)
        self.drafted = Counter("shadow_edge_speculative_drafted_tokens", "tokens the shadow drafted (speculative)",
                               ["model"], registry=r)
        self.accepted = Counter("shadow_edge_speculative_accepted_tokens", "drafted tokens the combined model "
                                "accepted (acceptance = accepted / drafted)", ["model"], registry=r)

        self.strategy_events = Counter("shadow_edge_strategy_events", "what a mode's strategy counted (its stats' "
                                       "counters(): e.g. speculative drafted/accepted, cascade escalations)",
                                       ["model", "mode", "event"], registry=r)
        self._named = {("speculative", "drafted"): self.drafted, ("speculative", "accepted"): self.accepted,
                       ("cascade", "escalations"): self.escalations}

    def count_stats(self, model: str, mode: str, stats) -> None:
        """Count a request's strategy stats (their `counters()`, if any)."""
        for event, n in (stats.counters() if hasattr(stats, "counters") else {}).items():
            self.strategy_events.labels(model, mode, event).inc(n)
            if (mode, event) in self._named:
                self._named[(mode, event)].labels(model).inc(n)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
