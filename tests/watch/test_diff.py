"""Pure parts of the watcher: snapshot diff and outcome classification."""

from __future__ import annotations

import pytest

from kpsbot.kps.client import KpsError
from kpsbot.kps.models import FailedTask, RunningTask, TaskRecords, TaskStatus
from kpsbot.watch.diff import (
    FAILED,
    LOOKUP_FAILED,
    MAX_LOOKUP_FAILURES,
    RUNNING,
    SUCCEEDED,
    UNKNOWN,
    classify,
    classify_replaced,
    diff_snapshot,
    failed_index,
)


def task(task_id: str, when: str = "1700000000000") -> RunningTask:
    return RunningTask(task_id, "RUNNING_RESET", when, f"srv-{task_id}", f"id-{task_id}", "kp")


def records(*tasks: RunningTask) -> TaskRecords:
    index = TaskRecords({})
    index.extend([t.to_api() for t in tasks])
    return index


T = "1700000000000"


@pytest.mark.parametrize(
    ("stored", "current", "appeared", "disappeared", "replaced"),
    [
        ({}, [], [], [], []),
        ({}, [("a", T)], ["a"], [], []),
        ({"a": T}, [("a", T)], [], [], []),
        ({"a": T}, [], [], [("a", T)], []),
        ({"a": T, "b": T}, [("b", T), ("c", T)], ["c"], [("a", T)], []),
        ({"z": T, "y": T}, [("x", T), ("w", T)], ["w", "x"], [("y", T), ("z", T)], []),
        # The same task_id with another task_time is a new run, and the stored run is over.
        ({"a": T}, [("a", "1700000009000")], ["a"], [], [("a", T)]),
    ],
)
def test_diff_snapshot(stored, current, appeared, disappeared, replaced):
    diff = diff_snapshot(stored, records(*(task(i, when) for i, when in current)))
    assert [t.task_id for t in diff.appeared] == appeared
    assert diff.disappeared == disappeared and diff.replaced == replaced
    assert diff.unchanged == (not appeared and not disappeared and not replaced)


def test_diff_orders_starts_by_time():
    current = records(task("late", "1700000009000"), task("early", "1700000001000"))
    diff = diff_snapshot({"gone": T}, current)
    assert [t.task_id for t in diff.appeared] == ["early", "late"] and diff.disappeared == [("gone", T)]


def test_a_task_time_that_is_not_a_string_is_compared_as_text():
    index = TaskRecords({})
    index.extend([{"task_id": "a", "task_time": 1700000000000}])
    assert diff_snapshot({"a": "1700000000000"}, index).unchanged


FAILED_ROW = FailedTask("t", "FAILED_RESET", T, task_error_code="KPS.2003", task_error_msg="server stopped")
KEY = ("t", T)


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
    outcome = classify(KEY, status, failed_index([FAILED_ROW]), lookup_failures=failures)
    assert outcome.result == result and outcome.error_code == code
    assert outcome.finished == (result in (SUCCEEDED, FAILED, UNKNOWN))


def test_failed_task_missing_from_failed_list_still_fails():
    outcome = classify(KEY, TaskStatus("t", "FAILED_RESET"), {})
    assert (outcome.result, outcome.error_msg) == (FAILED, "")


def test_the_failed_list_is_matched_by_task_time_too():
    """The failed list may hold an earlier run of the same task_id: its error is not this run's."""
    earlier = FailedTask("t", "FAILED_RESET", "1600000000000", task_error_code="KPS.OLD")
    outcome = classify(KEY, TaskStatus("t", "FAILED_RESET"), failed_index([earlier]))
    assert outcome.result == FAILED and outcome.error_code == ""


@pytest.mark.parametrize(
    ("failed", "result", "code"),
    [([FAILED_ROW], FAILED, "KPS.2003"), ([], UNKNOWN, "")],
)
def test_a_replaced_run_is_failed_if_the_failed_list_holds_it_else_unknown(failed, result, code):
    outcome = classify_replaced(KEY, failed_index(failed))
    assert (outcome.result, outcome.error_code) == (result, code) and outcome.finished


def test_the_records_digest_is_the_sum_of_their_keys_whatever_the_order_and_duplicates():
    from kpsbot.kps.models import key_digest

    a, b = task("a", "1"), task("b", "2")
    forward, backward = records(a, b), records(b, a, b, a)
    assert forward.digest == backward.digest == key_digest("a", "1") + key_digest("b", "2")
    assert records(task("a", "2"), task("b", "1")).digest != forward.digest  # times swapped
    odd = TaskRecords({})
    odd.extend([{"task_id": "a", "task_time": 1}])  # coerced, still counted
    assert odd.digest == key_digest("a", "1")
