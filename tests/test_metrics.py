"""The metrics registry: every label an alert needs exists from the start, values move as expected."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kpsbot.metrics import Metrics
from kpsbot.slack.sender import REASONS


def samples(metrics: Metrics) -> dict[tuple[str, tuple], float]:
    text, content_type = metrics.exposition()
    assert content_type.startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_every_reason_kind_and_project_is_there_at_zero():
    found = samples(Metrics(["cn-north-4", "ap-southeast-1_prod"]))
    for reason in REASONS:
        assert found[("kpsbot_notifications_failed_total", (("reason", reason),))] == 0
    for project in ("cn-north-4", "ap-southeast-1_prod"):
        for result in ("ok", "error"):
            assert found[("kpsbot_polls_total", (("project", project), ("result", result)))] == 0
    assert found[("kpsbot_notifications_total", (("kind", "stuck"),))] == 0
    assert found[("kpsbot_commands_total", (("result", "refused"),))] == 0
    assert found[("kpsbot_outbox_pending", ())] == 0 and found[("kpsbot_watcher_leader", ())] == 0


@pytest.mark.parametrize(
    ("status", "label"),
    [(200, "2xx"), (204, "2xx"), (304, "4xx"), (404, "4xx"), (429, "4xx"), (503, "5xx"), (None, "error")],
)
def test_kps_requests_are_counted_by_status_class(status, label):
    metrics = Metrics()
    metrics.kps_request("task-status", status)
    metrics.kps_request("no-such-endpoint", status)
    found = samples(metrics)
    assert found[("kpsbot_kps_requests_total", (("endpoint", "task-status"), ("status", label)))] == 1
    assert found[("kpsbot_kps_requests_total", (("endpoint", "other"), ("status", label)))] == 1


def test_polls_notifications_and_the_database_state():
    pending = [3, 100.0]
    leader = [True]
    metrics = Metrics(
        ["p"], outbox=lambda: (pending[0], pending[1]), leader=lambda: leader[0], clock=lambda: 160.0
    )
    metrics.poll("p", True, 0.2, 42)
    metrics.poll("p", False, 15.0, None)
    metrics.notification_sent("started")
    metrics.notification_sent("unheard-of")  # bounded labels: unknown kinds are not new series
    metrics.notification_failed("rateLimited")
    metrics.notification_failed("made-up")
    metrics.command("ok")
    found = samples(metrics)
    assert found[("kpsbot_polls_total", (("project", "p"), ("result", "ok")))] == 1
    assert found[("kpsbot_polls_total", (("project", "p"), ("result", "error")))] == 1
    assert found[("kpsbot_running_tasks", (("project", "p"),))] == 42  # a failed poll keeps the last count
    assert found[("kpsbot_poll_duration_seconds_count", (("project", "p"),))] == 2
    assert found[("kpsbot_notifications_total", (("kind", "started"),))] == 1
    assert ("kpsbot_notifications_total", (("kind", "unheard-of"),)) not in found
    assert found[("kpsbot_notifications_failed_total", (("reason", "rateLimited"),))] == 1
    assert found[("kpsbot_notifications_failed_total", (("reason", "other"),))] == 1
    assert found[("kpsbot_commands_total", (("result", "ok"),))] == 1
    assert found[("kpsbot_outbox_pending", ())] == 3
    assert found[("kpsbot_outbox_oldest_pending_age_seconds", ())] == 60
    assert found[("kpsbot_watcher_leader", ())] == 1
    leader[0], pending[:] = False, [0, None]
    found = samples(metrics)
    assert (
        found[("kpsbot_watcher_leader", ())] == 0
        and found[("kpsbot_outbox_oldest_pending_age_seconds", ())] == 0
    )
