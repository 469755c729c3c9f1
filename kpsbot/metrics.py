"""Prometheus metrics with prometheus-client: its own registry and text exposition, labels of bounded
cardinality only (projects, kinds, reasons, results; never a secret or a server name)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from kpsbot.slack.sender import REASONS

NOTIFICATION_KINDS = (
    "started",
    "finished",
    "finished_edit",
    "stuck",
    "started_burst",
    "finished_burst",
    "stuck_burst",
    "baseline",
    "outage",
    "recovered",
)
COMMAND_RESULTS = ("ok", "help", "usage", "refused", "busy", "error")
KPS_ENDPOINTS = ("running-tasks", "failed-tasks", "task-status", "projects", "other")
STATUS_CLASSES = ("2xx", "4xx", "5xx", "error")


class Metrics:
    """Every kpsbot metric, in a registry of its own. Gauges that describe the database (outbox
    depth, oldest entry) and the lease are read at scrape time through the callables given."""

    def __init__(
        self,
        projects: Iterable[str] = (),
        *,
        outbox: Callable[[], tuple[int, float | None]] | None = None,
        leader: Callable[[], bool] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.polls = Counter("kpsbot_polls", "KPS polls per project.", ["project", "result"], registry=r)
        self.poll_duration = Histogram(
            "kpsbot_poll_duration_seconds",
            "Time one poll of a project takes (every page, outcome look-ups, the write).",
            ["project"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.running = Gauge(
            "kpsbot_running_tasks", "Tasks running at the last good poll.", ["project"], registry=r
        )
        self.sent = Counter("kpsbot_notifications", "Notifications sent, by kind.", ["kind"], registry=r)
        self.failed = Counter(
            "kpsbot_notifications_failed", "Sends Slack did not take, by reason.", ["reason"], registry=r
        )
        self.commands = Counter("kpsbot_commands", "/kps-tasks commands, by result.", ["result"], registry=r)
        self.kps_requests = Counter(
            "kpsbot_kps_requests",
            "HTTP requests to KPS and IAM, by endpoint and status class.",
            ["endpoint", "status"],
            registry=r,
        )
        # Every label a rate() alert may be written against exists from the first scrape, at 0.
        for project in projects:
            for result in ("ok", "error"):
                self.polls.labels(project, result)
            self.poll_duration.labels(project)
            self.running.labels(project)
        for kind in NOTIFICATION_KINDS:
            self.sent.labels(kind)
        for reason in REASONS:
            self.failed.labels(reason)
        for result in COMMAND_RESULTS:
            self.commands.labels(result)
        for endpoint in KPS_ENDPOINTS:
            for status in STATUS_CLASSES:
                self.kps_requests.labels(endpoint, status)
        r.register(_StateCollector(outbox, leader, clock))

    # -- what the rest of kpsbot reports -----------------------------------------------------

    def poll(self, project: str, ok: bool, seconds: float, running: int | None) -> None:
        self.polls.labels(project, "ok" if ok else "error").inc()
        self.poll_duration.labels(project).observe(seconds)
        if ok and running is not None:
            self.running.labels(project).set(running)

    def notification_sent(self, kind: str) -> None:
        self.sent.labels(kind if kind in NOTIFICATION_KINDS else "other").inc()

    def notification_failed(self, reason: str) -> None:
        self.failed.labels(reason if reason in REASONS else "other").inc()

    def command(self, result: str) -> None:
        self.commands.labels(result if result in COMMAND_RESULTS else "error").inc()

    def kps_request(self, endpoint: str, status: int | None) -> None:
        if status is None:
            label = "error"  # no answer: timeout, reset, refused
        else:
            label = "2xx" if status < 300 else "4xx" if status < 500 else "5xx"
        self.kps_requests.labels(endpoint if endpoint in KPS_ENDPOINTS else "other", label).inc()

    def exposition(self) -> tuple[bytes, str]:
        """The text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _StateCollector:
    """kpsbot_outbox_pending, kpsbot_outbox_oldest_pending_age_seconds and kpsbot_watcher_leader."""

    def __init__(
        self,
        outbox: Callable[[], tuple[int, float | None]] | None,
        leader: Callable[[], bool] | None,
        clock: Callable[[], float],
    ) -> None:
        self.outbox = outbox
        self.leader = leader
        self.clock = clock

    def collect(self) -> Iterable[Any]:
        pending, oldest = self.outbox() if self.outbox is not None else (0, None)
        yield GaugeMetricFamily(
            "kpsbot_outbox_pending", "Notifications stored and not sent yet.", value=pending
        )
        age = max(self.clock() - oldest, 0.0) if oldest is not None else 0.0
        yield GaugeMetricFamily(
            "kpsbot_outbox_oldest_pending_age_seconds",
            "Age of the oldest notification not sent yet.",
            value=age,
        )
        yield GaugeMetricFamily(
            "kpsbot_watcher_leader",
            "1 while this process holds the watcher lease, else 0.",
            value=1.0 if self.leader is not None and self.leader() else 0.0,
        )
