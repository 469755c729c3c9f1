"""One poll cycle: fetch every page, diff with the stored snapshot, store it all in one go, then deliver."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Generic, TypeVar

from kpsbot.kps.client import KpsClient, KpsError
from kpsbot.kps.models import FailedTask, RunningTask, TaskRecords, TaskStatus
from kpsbot.slack.notifications import SAMPLE
from kpsbot.slack.text import action_label
from kpsbot.store import PollWrite, Store
from kpsbot.watch.delivery import DeliveryReport, Outbox, Sender
from kpsbot.watch.diff import (
    FINISHED,
    LOOKUP_FAILED,
    STARTED,
    Outcome,
    TaskChange,
    classify,
    diff_snapshot,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

PRUNE_EVERY = 6 * 3600.0
OUTAGE_KEYS = ("outage_failures", "outage_since", "outage_last_error", "outage_auth", "outage_announced")


@dataclass(frozen=True)
class CycleReport:
    ok: bool
    tasks: int = 0
    started: int = 0
    finished: int = 0
    delivered: int = 0
    pending: int = 0
    failed_deliveries: int = 0
    error: str | None = None
    baseline: bool = False
    skipped_rows: int = 0
    delivery_error: str | None = None  # a send failed this cycle (Slack down, refused, rate limited)

    def summary(self) -> str:
        if not self.ok:
            head = f"poll failed: {self.error}"
        elif self.baseline:
            head = f"baseline: {self.tasks} tasks running"
        else:
            head = f"{self.tasks} tasks running, {self.started} started, {self.finished} finished"
        tail = (
            f"{self.delivered} delivered, {self.pending} pending, {self.failed_deliveries} failed deliveries"
        )
        skipped = f", {self.skipped_rows} unreadable rows skipped" if self.skipped_rows else ""
        failed = f" (Slack delivery failed: {self.delivery_error})" if self.delivery_error else ""
        return f"{head}{skipped}; {tail}{failed}"


# -- pure planning ------------------------------------------------------------------------------


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


def _counts(tasks: Iterable[RunningTask]) -> dict[str, int]:
    return dict(Counter(action_label(t.action, t.operate_type) for t in tasks))


def _outcome_payload(change: TaskChange, start_kind: str | None) -> dict:
    outcome = change.outcome or Outcome("unknown")
    return {
        "task": change.task.to_api(),
        "outcome": outcome.result,
        "task_status": outcome.task_status,
        "error_code": outcome.error_code,
        "error_msg": outcome.error_msg,
        "duration_s": change.duration_s,
        "finished_at": change.finished_at.timestamp() if change.finished_at else None,
        "start_kind": start_kind,
    }


def plan_notifications(
    started: Sequence[TaskChange],
    finished: Sequence[tuple[TaskChange, str | None]],
    *,
    burst: int,
    stamp: str,
) -> list[dict]:
    """Outbox entries for one poll's changes; `finished` pairs each change with how its start was shown.

    More than `burst` of a kind become one summary. Edits of start messages are separate
    entries, so a reply that went out is never repeated because its edit failed.
    """
    entries: list[dict] = []
    if len(started) > burst:
        entries.append(
            {
                "kind": "started_burst",
                "dedup_key": f"started_burst:{stamp}",
                "payload": {
                    "total": len(started),
                    "counts": _counts(c.task for c in started),
                    "sample": [{"task": c.task.to_api()} for c in started[:SAMPLE]],
                },
            }
        )
    else:
        entries.extend(
            {
                "kind": "started",
                "dedup_key": f"started:{c.task.task_id}",
                "task_id": c.task.task_id,
                "payload": {"task": c.task.to_api()},
            }
            for c in started
        )
    if len(finished) > burst:
        outcomes = Counter((c.outcome.result if c.outcome else "unknown") for c, _ in finished)
        entries.append(
            {
                "kind": "finished_burst",
                "dedup_key": f"finished_burst:{stamp}",
                "payload": {
                    "total": len(finished),
                    "counts": _counts(c.task for c, _ in finished),
                    "outcomes": dict(outcomes),
                    "sample": [
                        {"task": c.task.to_api(), "outcome": c.outcome.result if c.outcome else "unknown"}
                        for c, _ in finished[:SAMPLE]
                    ],
                },
            }
        )
    for change, kind in finished:
        task_id, payload = change.task.task_id, _outcome_payload(change, kind)
        if len(finished) <= burst:
            entries.append(
                {
                    "kind": "finished",
                    "dedup_key": f"finished:{task_id}",
                    "task_id": task_id,
                    "payload": payload,
                }
            )
        if kind == "message":
            entries.append(
                {
                    "kind": "finished_edit",
                    "dedup_key": f"finished_edit:{task_id}",
                    "task_id": task_id,
                    "payload": payload,
                }
            )
    return entries


def _event(change: TaskChange, at: float) -> dict:
    outcome = change.outcome
    return {
        "at": at,
        "kind": change.kind,
        "task_id": change.task.task_id,
        "operate_type": change.task.operate_type,
        "server_name": change.task.server_name,
        "outcome": outcome.result if outcome else None,
        "duration_s": change.duration_s,
        "error_code": outcome.error_code if outcome else None,
        "error_msg": outcome.error_msg if outcome else None,
    }


def _task_row(task: RunningTask, start_kind: str) -> dict:
    return {**task.to_api(), "start_kind": start_kind}


# -- the cycle ---------------------------------------------------------------------------------


class Watcher:
    """Runs poll cycles for one project: KPS → diff → store (one transaction) → outbox delivery."""

    def __init__(
        self,
        kps: KpsClient,
        store: Store,
        sender: Sender | None = None,
        *,
        burst: int = 5,
        outage_polls: int = 3,
        project_id: str = "",
        location: str = "",
        retention_days: int = 30,
        status_workers: int = 8,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kps = kps
        self.store = store
        self.outbox = Outbox(store, sender, clock=clock) if sender is not None else None
        self.burst = burst
        self.outage_polls = outage_polls
        self.project_id = project_id or getattr(kps, "project_id", "")
        self.location = location
        self.retention_days = retention_days
        self.status_workers = status_workers
        self.clock = clock

    @classmethod
    def from_settings(
        cls,
        settings: Any,
        kps: KpsClient,
        store: Store,
        sender: Sender | None,
        *,
        location: str | None = None,
    ) -> Watcher:
        """The watcher for the configured project, with the KPSBOT_* tuning settings."""
        return cls(
            kps,
            store,
            sender,
            burst=settings.burst,
            outage_polls=settings.outage_polls,
            project_id=settings.project_id,
            location=settings.location if location is None else location,
            retention_days=settings.retention_days,
        )

    def run_cycle(self, stop: threading.Event | None = None) -> CycleReport:
        """One poll and one delivery round; `stop` set ends delivery between two entries."""
        begun = time.monotonic()
        # The stored ids are read while KPS pages arrive: the two waits overlap.
        known = _InBackground(self.store.running_task_ids)
        try:
            page = self.kps.running_task_records()
        except KpsError as exc:
            known.result()
            report = self._record_failure(exc, begun)
        else:
            report = self._record_success(page, begun, known.result())
        self._maybe_prune()
        delivery = self.deliver(stop)
        return replace(
            report,
            delivered=delivery.delivered,
            pending=delivery.pending,
            failed_deliveries=delivery.failed,
            delivery_error=delivery.error,
        )

    def deliver(self, stop: threading.Event | None = None) -> DeliveryReport:
        if self.outbox is None:
            return DeliveryReport(0, self.store.pending_deliveries(), self.store.failed_deliveries())
        return self.outbox.deliver(stop)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no notification is mid-delivery (see Outbox.wait_idle)."""
        return self.outbox is None or self.outbox.wait_idle(timeout)

    # -- a failed poll: nothing about tasks changes ----------------------------------------------

    def _record_failure(self, exc: KpsError, begun: float) -> CycleReport:
        now = self.clock()
        log.warning("KPS poll failed: %s", exc)
        meta = self.store.meta()
        failures = int(meta.get("outage_failures", "0")) + 1
        since = float(meta.get("outage_since", now))
        updates: dict[str, str | None] = {
            "outage_failures": str(failures),
            "outage_since": repr(since),
            "outage_last_error": str(exc),
            "outage_auth": "1" if exc.auth_rejected else "0",
        }
        outbox = []
        if self.outbox is not None and failures >= self.outage_polls and not meta.get("outage_announced"):
            outbox.append(
                {
                    "kind": "outage",
                    "dedup_key": f"outage:{since!r}",
                    "payload": {
                        "since": since,
                        "polls": failures,
                        "last_error": str(exc),
                        "auth_rejected": exc.auth_rejected,
                    },
                }
            )
            updates["outage_announced"] = "1"
        self._save(
            PollWrite(at=now, ok=False, error=str(exc), duration_ms=_ms(begun), outbox=outbox, meta=updates)
        )
        return CycleReport(ok=False, error=str(exc))

    # -- a good poll ----------------------------------------------------------------------------

    def _record_success(self, page: TaskRecords, begun: float, known: set[str]) -> CycleReport:
        meta = self.store.meta()
        if "baseline_at" not in meta:
            return self._record_baseline(page, begun, known, meta)
        diff = diff_snapshot(known, page)
        now = self.clock()
        poll = PollWrite(at=now, ok=True, duration_ms=0, task_count=len(page), skipped_rows=len(page.skipped))
        if diff.unchanged and "outage_failures" not in meta:
            poll.duration_ms = _ms(begun)
            self._save(poll)  # the common case: one row, nothing else
            return CycleReport(ok=True, tasks=len(page), skipped_rows=len(page.skipped))

        start_kind = "message" if len(diff.appeared) <= self.burst else "burst"
        started = [TaskChange(STARTED, t, started_at=t.started_at) for t in diff.appeared]
        poll.new_tasks = [_task_row(t, start_kind) for t in diff.appeared]
        # Disappeared tasks were last seen at the previous good poll: the polls table knows when.
        previous = self.store.last_poll(ok=True)
        finished = self._finished(diff.disappeared, poll, now, previous.at.timestamp() if previous else None)
        poll.events = [_event(c, now) for c in started] + [_event(c, now) for c, _ in finished]
        poll.outbox = plan_notifications(started, finished, burst=self.burst, stamp=f"{now:.6f}")
        self._recovery(meta, now, poll)
        poll.duration_ms = _ms(begun)
        self._save(poll)
        return CycleReport(
            ok=True,
            tasks=len(page),
            started=len(started),
            finished=len(finished),
            skipped_rows=len(page.skipped),
        )

    def _record_baseline(
        self, current: TaskRecords, begun: float, known: set[str], meta: dict[str, str]
    ) -> CycleReport:
        """The first good poll; `known` (the stored running ids) is normally empty, unless restored."""
        now = self.clock()
        poll = PollWrite(
            at=now, ok=True, duration_ms=0, task_count=len(current), skipped_rows=len(current.skipped)
        )
        poll.new_tasks = [_task_row(t, "baseline") for task_id, t in current.items() if task_id not in known]
        poll.outbox = [
            {
                "kind": "baseline",
                "dedup_key": "baseline",
                "payload": {
                    "project_id": self.project_id,
                    "location": self.location,
                    "count": len(current),
                    "counts": _counts(current.values()),
                },
            }
        ]
        self._recovery(meta, now, poll)
        poll.meta.update(baseline_at=repr(now))
        poll.duration_ms = _ms(begun)
        self._save(poll)
        log.info("baseline: %d tasks already running in project %s", len(current), self.project_id)
        return CycleReport(ok=True, tasks=len(current), baseline=True, skipped_rows=len(current.skipped))

    def _save(self, poll: PollWrite) -> None:
        """Store the poll; without a sender nobody would read its notifications, so none are queued
        (else they all flood the channel once one is configured)."""
        if self.outbox is None:
            poll.outbox = []
        self.store.record_poll(poll)

    @staticmethod
    def _recovery(meta: dict[str, str], now: float, poll: PollWrite) -> None:
        """A good poll ends an outage: clear its state, and say so if the outage was announced."""
        if "outage_failures" not in meta:
            return
        poll.meta.update(dict.fromkeys(OUTAGE_KEYS))
        if meta.get("outage_announced"):
            since = float(meta["outage_since"])
            log.info("KPS API reachable again after %s failed polls", meta["outage_failures"])
            poll.outbox.append(
                {
                    "kind": "recovered",
                    "dedup_key": f"recovered:{since!r}",
                    "payload": {"since": since, "until": now, "polls": int(meta["outage_failures"])},
                }
            )

    def _finished(
        self, gone: list[str], poll: PollWrite, now: float, last_seen: float | None
    ) -> list[tuple[TaskChange, str | None]]:
        """Classify the tasks that left the list; fills poll.finished / lookup_failed / lookup_ok."""
        if not gone:
            return []
        stored = self.store.tasks(gone)
        statuses = self._statuses(gone)
        failed_by_id: dict[str, FailedTask] = {}
        if any(isinstance(s, TaskStatus) and s.state == "FAILED" for s in statuses.values()):
            failed_by_id = self._failed_tasks()
        finished: list[tuple[TaskChange, str | None]] = []
        for task_id in gone:
            row = stored.get(task_id)
            if row is None:
                continue
            outcome = classify(task_id, statuses[task_id], failed_by_id, lookup_failures=row.lookup_failures)
            if outcome.result == LOOKUP_FAILED:
                log.warning(
                    "status of task %s unknown for now (%s); asking again next poll",
                    task_id,
                    outcome.error_msg,
                )
                poll.lookup_failed.append(task_id)
                continue
            if not outcome.finished:  # still READY_/RUNNING_: the list missed it
                if row.lookup_failures:
                    poll.lookup_ok.append(task_id)  # the failures must be in a row
                continue
            task = RunningTask(**row.to_api())
            started_at = task.started_at or _utc(row.first_seen)
            change = TaskChange(
                FINISHED,
                task,
                outcome,
                started_at=started_at,
                finished_at=_utc(now),
            )
            finished.append((change, row.start_kind))
            poll.finished.append(
                {
                    "task_id": task_id,
                    "outcome": outcome.result,
                    "task_status": outcome.task_status,
                    "error_code": outcome.error_code,
                    "error_msg": outcome.error_msg,
                    "finished_at": now,
                    "last_seen": last_seen,
                }
            )
        return finished

    def _statuses(self, task_ids: list[str]) -> dict[str, TaskStatus | KpsError]:
        def lookup(task_id: str) -> TaskStatus | KpsError:
            try:
                return self.kps.get_task_status(task_id)
            except KpsError as exc:
                return exc

        workers = max(1, min(self.status_workers, len(task_ids)))
        if workers == 1:
            return {task_id: lookup(task_id) for task_id in task_ids}
        from concurrent.futures import ThreadPoolExecutor  # only polls where tasks finished need it

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kps-status") as pool:
            return dict(zip(task_ids, pool.map(lookup, task_ids)))

    def _failed_tasks(self) -> dict[str, FailedTask]:
        try:
            return {t.task_id: t for t in self.kps.all_failed_tasks().tasks}
        except KpsError as exc:
            # The outcome is still known from tasks/{id}; only the error text is missing.
            log.warning("cannot read the failed-tasks list for error details: %s", exc)
            return {}

    def _maybe_prune(self) -> None:
        now = self.clock()
        last = float(self.store.get_meta("pruned_at", "0") or 0)
        if now - last >= PRUNE_EVERY:
            self.store.prune(now=now, retention_days=self.retention_days)
            self.store.set_meta({"pruned_at": repr(now)})


class _InBackground(Generic[T]):
    """Calls `fn` on a thread; `result()` waits, then returns its value or raises its exception."""

    def __init__(self, fn: Callable[[], T]) -> None:
        self._fn = fn
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kpsbot-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._fn()
        except BaseException as exc:  # handed to the caller by result()
            self._error = exc

    def result(self) -> T:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]  # set when there was no error


def _ms(begun: float) -> int:
    return int((time.monotonic() - begun) * 1000)
