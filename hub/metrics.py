"""Prometheus metrics, one registry per hub instance (tests run several in one process)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events = Counter(
            "hub_events_total", "Events received from sources", ["source_type"], registry=self.registry
        )
        self.invocations = Counter(
            "hub_invocations_total",
            "Function invocations by outcome",
            ["function", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "hub_invocation_duration_seconds",
            "Function run time",
            ["function"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        self.retries = Counter(
            "hub_retries_total", "Attempts after the first", ["trigger"], registry=self.registry
        )
        self.dead_letters = Counter(
            "hub_dead_letters_total", "Events dead-lettered", ["trigger"], registry=self.registry
        )
        self.duplicates = Counter(
            "hub_duplicate_events_total",
            "Redelivered events skipped because they already finished",
            ["trigger"],
            registry=self.registry,
        )
        self.inbox_depth = Gauge("hub_inbox_depth", "Events waiting in the inbox", registry=self.registry)
        # What an autoscaler (KEDA's Prometheus scaler) reads as work waiting: the shared inbox's
        # items (S3 notifications, async invokes, schedule ticks, replays) by the trigger they
        # are for ("(invoke)" for async invokes). The inbox is shared: every instance reports the
        # same numbers, so aggregate with max over instances, not sum (deploy/kubernetes).
        self.inbox_backlog = Gauge(
            "hub_inbox_backlog",
            "Inbox items (queued, retrying or running) by trigger; the same on every instance",
            ["trigger"], registry=self.registry,
        )
        self.workers = Gauge(
            "hub_workers", "Worker processes by state", ["state"], registry=self.registry
        )
        # Usage metering (hub.delivery.usage): counted when the invocation's record is written.
        self.billed_ms = Counter(
            "hub_billed_ms_total", "Billed milliseconds (duration rounded up to 1 ms)", ["function"],
            registry=self.registry,
        )
        self.gb_seconds = Counter(
            "hub_gb_seconds_total", "GB-seconds: billed seconds x memory_mb / 1024", ["function"],
            registry=self.registry,
        )
        self.usage_write_failures = Counter(
            "hub_usage_write_failures_total",
            "Invocations whose usage could not be added to the usage buckets (their records were written)",
            registry=self.registry,
        )
        # Refreshed at scrape time (hub.intake.cursors): what this instance knows of each trigger's cursor.
        self.trigger_lag = Gauge(
            "hub_trigger_lag",
            "Kafka: messages behind (end - committed) on the partitions this instance holds; sum over instances",
            ["trigger"], registry=self.registry,
        )
        self.cursor_age = Gauge(
            "hub_trigger_cursor_age_seconds",
            "MongoDB: age of the saved change-stream position (reported by the instance reading it)",
            ["trigger"], registry=self.registry,
        )
        # Not "hub_dead_letters": that name is taken by the counter hub_dead_letters_total.
        self.dead_letters_stored = Gauge(
            "hub_dead_letters_stored",
            "Dead letters stored now, by trigger (\"(invoke)\": direct invokes); the same on every instance",
            ["trigger"], registry=self.registry,
        )


SlotReader = Callable[[], tuple[int, int]]


class SlotsCollector(Collector):
    """``hub_worker_slots_in_use`` and ``hub_worker_slots_total`` read from the worker pool at
    scrape time, so they cannot go stale between invocations; an autoscaler sums them over the
    replicas to scale on running invocations against capacity."""

    def __init__(self, read: SlotReader) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        in_use, total = self._read()
        yield GaugeMetricFamily("hub_worker_slots_in_use",
                                "Invocations running in this instance's workers now", value=in_use)
        yield GaugeMetricFamily("hub_worker_slots_total",
                                "Concurrency slots of the function versions this instance holds "
                                "(the sum of their max_concurrency)", value=total)


def track_slots(metrics: Metrics, read: SlotReader) -> None:
    """Export the worker slots of one instance (wired by hub.app, which knows the pool)."""
    metrics.registry.register(SlotsCollector(read))
