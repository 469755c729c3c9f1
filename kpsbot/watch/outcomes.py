"""Outcome look-up: asks KPS what became of the tasks that left the running list (a few calls at a time)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from kpsbot.kps.client import KpsClient, KpsError
from kpsbot.kps.models import TaskStatus
from kpsbot.logs import log_context
from kpsbot.store import StoredTask, TaskKey
from kpsbot.watch.diff import FailedIndex, Outcome, classify, classify_replaced, failed_index

log = logging.getLogger(__name__)


class OutcomeLookup:
    """`tasks/{task_id}` for each disappeared task (`workers` at a time), and the failed-tasks list
    once when a status says FAILED or a task came back with a new task_time (for the error)."""

    def __init__(self, kps: KpsClient, *, workers: int = 8) -> None:
        self.kps = kps
        self.workers = workers

    def __call__(self, gone: Sequence[StoredTask], replaced: Sequence[StoredTask]) -> dict[TaskKey, Outcome]:
        if not gone and not replaced:
            return {}
        statuses = self._statuses([row.task_id for row in gone])
        failed: FailedIndex = {}
        if replaced or any(isinstance(s, TaskStatus) and s.state == "FAILED" for s in statuses.values()):
            failed = self._failed_tasks()
        outcomes = {
            row.key: classify(row.key, statuses[row.task_id], failed, lookup_failures=row.lookup_failures)
            for row in gone
        }
        for row in replaced:
            outcomes[row.key] = classify_replaced(row.key, failed)
        for key, outcome in outcomes.items():
            if outcome.result == "lookup_failed":
                log.warning(
                    "status of task %s unknown for now (%s); asking again next poll",
                    key[0],
                    outcome.error_msg,
                    extra=log_context(task_id=key[0]),
                )
        return outcomes

    def _statuses(self, task_ids: list[str]) -> dict[str, TaskStatus | KpsError]:
        def lookup(task_id: str) -> TaskStatus | KpsError:
            try:
                return self.kps.get_task_status(task_id)
            except KpsError as exc:
                return exc

        workers = max(1, min(self.workers, len(task_ids)))
        if workers == 1:
            return {task_id: lookup(task_id) for task_id in task_ids}
        from concurrent.futures import ThreadPoolExecutor  # only polls where tasks finished need it

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kps-status") as pool:
            return dict(zip(task_ids, pool.map(lookup, task_ids)))

    def _failed_tasks(self) -> FailedIndex:
        try:
            return failed_index(self.kps.all_failed_tasks().tasks)
        except KpsError as exc:
            # The outcome is still known from tasks/{id}; only the error text is missing.
            log.warning("cannot read the failed-tasks list for error details: %s", exc)
            return {}
