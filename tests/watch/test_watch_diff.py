"""Pure parts of the watcher: snapshot diff, outcome classification, notification planning."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from kpsbot.kps.client import KpsError
from kpsbot.kps.models import FailedTask, RunningTask, TaskStatus
from kpsbot.watch.cycle import plan_notifications
from kpsbot.watch.diff import (
    FAILED,
    LOOKUP_FAILED,
    MAX_LOOKUP_FAILURES,
    RUNNING,
    SUCCEEDED,
    UNKNOWN,
    Outcome,
    TaskChange,
    classify,
    diff_snapshot,
)


def task(task_id: str, when: str = "1700000000000") -> RunningTask:
    return RunningTask(task_id, "RUNNING_RESET", when, f"srv-{task_id}", f"id-{task_id}", "kp")


@pytest.mark.parametrize(
    ("stored", "current", "appeared", "disappeared"),
    [
        (set(), [], [], []),
        (set(), ["a"], ["a"], []),
        ({"a"}, ["a"], [], []),
        ({"a"}, [], [], ["a"]),
        ({"a", "b"}, ["b", "c"], ["c"], ["a"]),
        ({"z", "y"}, ["x", "w"], ["w", "x"], ["y", "z"]),
    ],
)
def test_diff_snapshot(stored, current, appeared, disappeared):
    diff = diff_snapshot(stored, {t: task(t) for t in current})
    assert [t.task_id for t in diff.appeared] == appeared
    assert diff.disappeared == disappeared
    assert diff.unchanged == (not appeared and not disappeared)


def test_diff_accepts_a_mapping_and_orders_starts_by_time():
    current = {"late": task("late", "1700000009000"), "early": task("early", "1700000001000")}
    diff = diff_snapshot({"gone": object()}, current)
    assert [t.task_id for t in diff.appeared] == ["early", "late"] and diff.disappeared == ["gone"]


FAILED_ROW = FailedTask("t", "FAILED_RESET", task_error_code="KPS.2003", task_error_msg="server stopped")


@pytest.mark.parametrize(
    ("status", "failures", "result", "code"),
    [
        (TaskStatus("t", "READY_RESET"), 0, RUNNING, ""),
        (TaskStatus("t", "RUNNING_UNBIND"), 0, RUNNING, ""),
        (TaskStatus("t", "SUCCESS_REPLACE"), 0, SUCCEEDED, ""),
        (TaskStatus("t", "FAILED_RESET"), 0, FAILED, "KPS.2003"),
        (TaskStatus("t", "WEIRD"), 0, UNKNOWN, ""),
        (KpsError("gone", status=404), 0, UNKNOWN, ""),
        (KpsError("boom", status=500), 0, LOOKUP_FAILED, ""),
        (KpsError("slow", error_code="timeout"), MAX_LOOKUP_FAILURES - 1, UNKNOWN, "timeout"),
    ],
)
def test_classify(status, failures, result, code):
    outcome = classify("t", status, {"t": FAILED_ROW}, lookup_failures=failures)
    assert outcome.result == result and outcome.error_code == code
    assert outcome.finished == (result in (SUCCEEDED, FAILED, UNKNOWN))


def test_failed_task_missing_from_failed_list_still_fails():
    outcome = classify("t", TaskStatus("t", "FAILED_RESET"), {})
    assert (outcome.result, outcome.error_msg) == (FAILED, "")


def finished(task_id: str, kind: str = "message") -> tuple[TaskChange, str]:
    at = datetime(2024, 1, 1, tzinfo=timezone.utc)
    return TaskChange("finished", task(task_id), Outcome(SUCCEEDED), started_at=at, finished_at=at), kind


@pytest.mark.parametrize(
    ("starts", "finishes", "kinds"),
    [
        (0, [], []),
        (2, [], ["started", "started"]),
        (3, [], ["started_burst"]),
        (0, ["message"], ["finished", "finished_edit"]),
        (0, ["baseline", "burst"], ["finished", "finished"]),
        (0, ["message", "baseline", "message"], ["finished_burst", "finished_edit", "finished_edit"]),
    ],
)
def test_plan_notifications(starts, finishes, kinds):
    started = [TaskChange("started", task(f"s{i}")) for i in range(starts)]
    entries = plan_notifications(
        started, [finished(f"f{i}", k) for i, k in enumerate(finishes)], burst=2, stamp="1"
    )
    assert [e["kind"] for e in entries] == kinds
    assert len({e["dedup_key"] for e in entries}) == len(entries)


def test_burst_summary_lists_only_a_sample():
    started = [TaskChange("started", task(f"s{i}")) for i in range(10_000)]
    [entry] = plan_notifications(started, [], burst=5, stamp="1")
    assert entry["payload"]["total"] == 10_000 and len(entry["payload"]["sample"]) == 10
    assert entry["payload"]["counts"] == {"Reset": 10_000}
