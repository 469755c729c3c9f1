"""Pure snapshot diffing and outcome classification: which tasks started, which finished, and how."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime

from kpsbot.kps.client import KpsError
from kpsbot.kps.models import FailedTask, RunningTask, TaskStatus

STARTED, FINISHED = "started", "finished"
RUNNING, LOOKUP_FAILED = "running", "lookup_failed"  # not finished (yet)
SUCCEEDED, FAILED, UNKNOWN = "succeeded", "failed", "unknown"
MAX_LOOKUP_FAILURES = 3  # polls in a row whose status lookup failed before giving up on a task
DEFINITIVE_STATUSES = (400, 404)  # KPS does not know the task (any more)


@dataclass(frozen=True)
class SnapshotDiff:
    appeared: list[RunningTask]  # oldest start first
    disappeared: list[str]  # task ids, sorted

    @property
    def unchanged(self) -> bool:
        return not self.appeared and not self.disappeared


def diff_snapshot(stored: Collection[str], current: Mapping[str, RunningTask]) -> SnapshotDiff:
    """Compare the stored running task ids (a set or a mapping) with the tasks KPS lists now.

    Only id sets are compared, so a poll where nothing changed builds no objects.
    """
    stored_ids = stored if isinstance(stored, (set, frozenset)) else set(stored)
    if current.keys() == stored_ids:  # the usual poll: one C-level comparison, no new sets
        return SnapshotDiff([], [])
    appeared = [current[task_id] for task_id in current.keys() - stored_ids]
    appeared.sort(key=lambda t: (t.task_time.zfill(20), t.task_id))
    disappeared = sorted(stored_ids - current.keys())
    return SnapshotDiff(appeared, disappeared)


@dataclass(frozen=True)
class Outcome:
    """What became of a task that left the running list."""

    result: str  # running | lookup_failed | succeeded | failed | unknown
    task_status: str = ""
    error_code: str = ""
    error_msg: str = ""

    @property
    def finished(self) -> bool:
        return self.result in (SUCCEEDED, FAILED, UNKNOWN)


def classify(
    task_id: str,
    status: TaskStatus | KpsError,
    failed_by_id: Mapping[str, FailedTask],
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
        failed = failed_by_id.get(task_id)
        return Outcome(
            FAILED,
            task_status=status.task_status,
            error_code=failed.task_error_code if failed else "",
            error_msg=failed.task_error_msg if failed else "",
        )
    return Outcome(UNKNOWN, task_status=status.task_status, error_msg="KPS reported an unexpected status")


@dataclass(frozen=True)
class TaskChange:
    """A task that started or finished in one poll."""

    kind: str  # started | finished
    task: RunningTask
    outcome: Outcome | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return max((self.finished_at - self.started_at).total_seconds(), 0.0)
