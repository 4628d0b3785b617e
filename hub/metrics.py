"""Prometheus metrics, one registry per hub instance (tests run several in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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
