"""Pure snapshot diffing and outcome classification: which tasks started, which finished, and how."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from kpsbot.kps.client import KpsError
from kpsbot.kps.models import FailedTask, RunningTask, TaskRecords, TaskStatus

TaskKey = tuple[str, str]  # (task_id, task_time)

RUNNING, LOOKUP_FAILED = "running", "lookup_failed"  # not finished (yet)
SUCCEEDED, FAILED, UNKNOWN = "succeeded", "failed", "unknown"
FINISHED_RESULTS = (SUCCEEDED, FAILED, UNKNOWN)
MAX_LOOKUP_FAILURES = 3  # polls in a row whose status lookup failed before giving up on a task
DEFINITIVE_STATUSES = (400, 404)  # KPS does not know the task (any more)


class SnapshotDiff(NamedTuple):
    appeared: list[RunningTask]  # oldest start first
    disappeared: list[TaskKey]  # gone from the list: its status says what became of it
    replaced: list[TaskKey]  # its task_id came back with another task_time: that earlier run is over

    @property
    def unchanged(self) -> bool:
        return not (self.appeared or self.disappeared or self.replaced)


def diff_snapshot(stored: Mapping[str, str], current: TaskRecords) -> SnapshotDiff:
    """Compare the stored running tasks (task_id -> task_time) with the tasks KPS lists now.

    A task is its task_id *and* task_time (SPEC §1): the same ID with another time is a new run,
    and ends the stored one. Only ids and times are compared, so a poll where nothing changed
    builds no objects.
    """
    records = current.records
    if records.keys() == stored.keys() and all(
        records[task_id]["task_time"] == task_time for task_id, task_time in stored.items()
    ):
        return SnapshotDiff([], [], [])
    appeared = [current[task_id] for task_id in records.keys() - stored.keys()]
    replaced = []
    for task_id in records.keys() & stored.keys():
        if records[task_id]["task_time"] != stored[task_id]:
            replaced.append((task_id, stored[task_id]))
            appeared.append(current[task_id])
    appeared.sort(key=lambda t: (t.task_time.zfill(20), t.task_id))
    disappeared = sorted((task_id, stored[task_id]) for task_id in stored.keys() - records.keys())
    return SnapshotDiff(appeared, disappeared, sorted(replaced))


class Outcome(NamedTuple):
    """What became of a task that left the running list."""

    result: str  # running | lookup_failed | succeeded | failed | unknown
    task_status: str = ""
    error_code: str = ""
    error_msg: str = ""

    @property
    def finished(self) -> bool:
        return self.result in FINISHED_RESULTS


FailedIndex = Mapping[TaskKey, FailedTask]


def classify(
    key: TaskKey,
    status: TaskStatus | KpsError,
    failed: FailedIndex,
    *,
    lookup_failures: int = 0,
) -> Outcome:
    """Outcome of a task missing from the running list, from its `tasks/{id}` answer.

    READY_/RUNNING_ means paging missed it: still running. A failed lookup is retried on
    the next polls (a KPS hiccup must not end a task) until MAX_LOOKUP_FAILURES in a row.
    """
    if isinstance(status, KpsError):
        if status.status in DEFINITIVE_STATUSES:
            return Outcome(UNKNOWN, error_msg="KPS no longer knows this task")
        if lookup_failures + 1 >= MAX_LOOKUP_FAILURES:
            return Outcome(UNKNOWN, error_code=status.error_code or "", error_msg=str(status))
        return Outcome(LOOKUP_FAILED, error_msg=str(status))
    state = status.state
    if state in ("READY", "RUNNING"):
        return Outcome(RUNNING, task_status=status.task_status)
    if state == "SUCCESS":
        return Outcome(SUCCEEDED, task_status=status.task_status)
    if state == "FAILED":
        row = failed.get(key)
        return Outcome(
            FAILED,
            task_status=status.task_status,
            error_code=row.task_error_code if row else "",
            error_msg=row.task_error_msg if row else "",
        )
    return Outcome(UNKNOWN, task_status=status.task_status, error_msg="KPS reported an unexpected status")


def classify_replaced(key: TaskKey, failed: FailedIndex) -> Outcome:
    """Outcome of a run whose task_id came back with a new task_time before it was seen to finish.

    `tasks/{id}` now answers for the new run, so only the failed-tasks list can tell.
    """
    row = failed.get(key)
    if row is not None:
        return Outcome(
            FAILED,
            task_status=row.operate_type,
            error_code=row.task_error_code,
            error_msg=row.task_error_msg,
        )
    return Outcome(UNKNOWN, error_msg="KPS started this task again before kpsbot saw it finish")


def failed_index(tasks: list[FailedTask]) -> dict[TaskKey, FailedTask]:
    """The failed-tasks list by (task_id, task_time); the first row of a key wins."""
    index: dict[TaskKey, FailedTask] = {}
    for task in tasks:
        index.setdefault((task.task_id, task.task_time), task)
    return index
