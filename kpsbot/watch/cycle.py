"""One watcher cycle: every project is polled on its own — fetch, diff, look up outcomes, plan, write
(one transaction) — and then the outbox is delivered."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from kpsbot.kps.client import KpsClient, KpsError
from kpsbot.kps.models import TaskRecords, key_digest
from kpsbot.logs import log_context
from kpsbot.store import PollWrite, ProjectState, Store
from kpsbot.watch.diff import SnapshotDiff, diff_snapshot
from kpsbot.watch.outbox import DeliveryReport, Outbox
from kpsbot.watch.outcomes import OutcomeLookup
from kpsbot.watch.plan import Policy, PollInput, ProjectInfo, Route, plan_poll

log = logging.getLogger(__name__)

PRUNE_EVERY = 6 * 3600.0
VERIFY_SECONDS = 300.0  # how long a snapshot digest is trusted before the snapshot is read again
BYTES, DIGEST = "bytes", "digest"  # how a poll is known to have changed nothing (ProjectPoller._unchanged)
MAX_PROJECT_POLLS = 4  # projects polled at once; the KPS clients' limiter bounds their requests too


class ProjectReport(NamedTuple):
    """What one project's poll found."""

    project: str
    ok: bool
    tasks: int = 0
    started: int = 0
    finished: int = 0
    stuck: int = 0
    baseline: bool = False
    skipped_rows: int = 0
    error: str | None = None
    duration_s: float = 0.0

    def summary(self) -> str:
        if not self.ok:
            return f"poll failed: {self.error}"
        if self.baseline:
            head = f"baseline: {self.tasks} tasks running"
        else:
            head = f"{self.tasks} tasks running, {self.started} started, {self.finished} finished"
            if self.stuck:
                head += f", {self.stuck} stuck"
        skipped = f", {self.skipped_rows} unreadable rows skipped" if self.skipped_rows else ""
        return head + skipped


class CycleReport(NamedTuple):
    """One cycle: each project's poll and the delivery round after them."""

    projects: tuple[ProjectReport, ...]
    delivery: DeliveryReport = DeliveryReport(0, 0, 0)

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.projects)

    def _sum(self, name: str) -> int:
        return sum(getattr(p, name) for p in self.projects)

    @property
    def tasks(self) -> int:
        return self._sum("tasks")

    @property
    def started(self) -> int:
        return self._sum("started")

    @property
    def finished(self) -> int:
        return self._sum("finished")

    @property
    def baseline(self) -> bool:
        return any(p.baseline for p in self.projects)

    @property
    def error(self) -> str | None:
        return next((p.error for p in self.projects if p.error), None)

    @property
    def delivered(self) -> int:
        return self.delivery.delivered

    @property
    def pending(self) -> int:
        return self.delivery.pending

    @property
    def failed_deliveries(self) -> int:
        return self.delivery.failed

    @property
    def delivery_error(self) -> str | None:
        return self.delivery.error

    def summary(self) -> str:
        if len(self.projects) == 1:
            head = self.projects[0].summary()
        else:
            head = "; ".join(f"{p.project}: {p.summary()}" for p in self.projects) or "no project to poll"
        d = self.delivery
        tail = f"{d.delivered} delivered, {d.pending} pending, {d.failed} failed deliveries"
        if d.skipped:
            tail += f", {d.skipped} skipped"
        failed = f" (Slack delivery failed: {d.error})" if d.error else ""
        return f"{head}; {tail}{failed}"


class WatchedProject(NamedTuple):
    """A project whose ID is known, with the KPS client for it."""

    info: ProjectInfo
    kps: KpsClient


class ProjectPoller:
    """Polls one project: fetch → diff → look up outcomes → plan → write."""

    def __init__(
        self,
        project: WatchedProject,
        store: Store,
        *,
        fixed_channel: str | None = None,
        status_workers: int = 8,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.project = project
        self.store = store
        self.fixed_channel = fixed_channel
        self.lookup = OutcomeLookup(project.kps, workers=status_workers)
        self.clock = clock

    def poll(self, policy: Policy) -> tuple[ProjectReport, PollWrite]:
        begun = time.monotonic()
        pid = self.project.info.id
        state = self.store.project_state(pid)
        # The poll's instant is when the list was asked for, not when the answer came: a slow answer
        # (retries, a timeout) must not make a task that was 59 minutes old "still running after an
        # hour" (the soak caught it).
        now = self.clock()
        try:
            records: TaskRecords | None = self.project.kps.running_task_records()
            error: KpsError | None = None
        except KpsError as exc:
            records, error = None, exc
            log.warning(
                "KPS poll of project %s failed: %s",
                self.project.info.name,
                exc,
                extra=log_context(project=self.project.info.name),
            )
        stored: dict[str, str] | None = None
        same = self._unchanged(state, records, now) if records is not None else None
        if records is not None and same is None:
            stored = self.store.running_snapshot(pid)
        poll = PollInput(self.project.info, now, state, stored or {}, records=records, error=error)
        if records is not None and state.baseline_at is not None:
            poll = self._gather(poll, records, policy, stored is None)
        write = plan_poll(_with_duration(poll, begun), policy)
        if records is not None and stored is not None:
            write.state = _with_digest(write.state or state, stored, write, now, records)
        elif records is not None and same == DIGEST and records.fingerprint != state.listing_fingerprint:
            # The same tasks in other bytes (another order, a renamed server): remember these.
            fingerprint = records.fingerprint if not records.skipped else None
            write.state = (write.state or state)._replace(listing_fingerprint=fingerprint)
        self.store.record_poll(write)
        report = ProjectReport(
            project=self.project.info.name,
            ok=records is not None,
            tasks=len(records) if records is not None else 0,
            started=sum(1 for e in write.events if e.kind == "started"),
            finished=len(write.finished),
            stuck=len(write.stuck),
            baseline=records is not None and state.baseline_at is None,
            skipped_rows=write.skipped_rows,
            error=str(error) if error is not None else None,
            duration_s=time.monotonic() - begun,
        )
        if report.baseline:
            log.info(
                "baseline: %d tasks already running in project %s",
                report.tasks,
                self.project.info.name,
                extra=log_context(project=self.project.info.name),
            )
        return report, write

    @staticmethod
    def _unchanged(state: ProjectState, records: TaskRecords, now: float) -> str | None:
        """How the usual poll knows nothing changed, so the snapshot need not be read at all:
        BYTES, the listing is byte for byte the last one that matched the snapshot (its tasks are
        not even indexed); DIGEST, its tasks have the snapshot's digest. None: read the snapshot
        and diff. Every VERIFY_SECONDS the snapshot is read anyway, and both checked."""
        if state.baseline_at is None or state.checked_at is None or now - state.checked_at >= VERIFY_SECONDS:
            return None
        if (
            records.fingerprint is not None
            and records.fingerprint == state.listing_fingerprint
            and state.snapshot_count is not None
        ):
            records.trust(state.snapshot_count)
            return BYTES
        if state.snapshot_digest == records.digest and state.snapshot_count == len(records):
            return DIGEST
        return None

    def _gather(self, poll: PollInput, records: TaskRecords, policy: Policy, unchanged: bool) -> PollInput:
        """What the planner needs beyond the lists: stored rows and outcomes of changed tasks, stuck
        candidates, and which channels have a start message to reply to."""
        pid = self.project.info.id
        diff = SnapshotDiff([], [], []) if unchanged else diff_snapshot(poll.stored, records)
        stuck = []
        if policy.stuck_minutes:
            cutoff_ms = int((poll.now - policy.stuck_minutes * 60) * 1000)
            stuck = self.store.stuck_candidates(pid, cutoff_ms)
        if diff.unchanged and not stuck:
            return PollInput(
                poll.project, poll.now, poll.state, poll.stored, records=records, diff=diff
            )  # the usual poll: nothing more to read
        changed = [*diff.disappeared, *diff.replaced, *((t.task_id, t.task_time) for t in diff.appeared)]
        known = self.store.tasks(pid, changed) if changed else {}
        gone = [known[key] for key in diff.disappeared if key in known]
        replaced = [known[key] for key in diff.replaced if key in known]
        outcomes = self.lookup(gone, replaced)
        threaded = [*outcomes, *(row.key for row in stuck)]
        starts = self.store.start_channels(pid, threaded, fixed=self.fixed_channel) if threaded else {}
        previous = self.store.last_poll(pid, ok=True) if outcomes else None
        return PollInput(
            poll.project,
            poll.now,
            poll.state,
            poll.stored,
            records=records,
            diff=diff,
            known=known,
            outcomes=outcomes,
            stuck=stuck,
            starts=starts,
            last_seen=previous.at.timestamp() if previous else None,
        )


def _with_digest(
    state: ProjectState, stored: dict[str, str], write: PollWrite, now: float, records: TaskRecords
) -> ProjectState:
    """The state with the digest and size of the snapshot as this poll leaves it (the one read,
    less the tasks that finished, plus the new ones), and the listing's fingerprint if the
    snapshot now matches it (a task whose outcome could not be looked up stays in the snapshot:
    the next poll must diff again)."""
    digest = sum(key_digest(task_id, task_time) for task_id, task_time in stored.items())
    digest -= sum(key_digest(*row.key) for row in write.finished)
    count = len(stored) - len(write.finished)
    for new in write.new_tasks:
        if stored.get(new.task.task_id) != new.task.task_time:  # not back from the stored snapshot
            digest += key_digest(new.task.task_id, new.task.task_time)
            count += 1
    matches = digest == records.digest and count == len(records) and not records.skipped
    return state._replace(
        snapshot_digest=digest,
        snapshot_count=count,
        checked_at=now,
        listing_fingerprint=records.fingerprint if matches else None,
    )


def _with_duration(poll: PollInput, begun: float) -> PollInput:
    return poll._replace(duration_ms=int((time.monotonic() - begun) * 1000))


class Watcher:
    """Runs cycles over every project, then delivers the outbox."""

    def __init__(
        self,
        projects: Callable[[], Sequence[WatchedProject]] | Sequence[WatchedProject],
        store: Store,
        outbox: Outbox | None = None,
        *,
        routes: Callable[[], Sequence[Route]] | Sequence[Route] = (),
        burst: int = 5,
        outage_polls: int = 3,
        stuck_minutes: int = 60,
        retention_days: int = 30,
        status_workers: int = 8,
        clock: Callable[[], float] = time.time,
        on_poll: Callable[[ProjectReport], None] | None = None,
    ) -> None:
        self._projects = projects
        self.on_poll = on_poll
        self.store = store
        self.outbox = outbox
        self._routes = routes
        self.burst = burst
        self.outage_polls = outage_polls
        self.stuck_minutes = stuck_minutes
        self.retention_days = retention_days
        self.status_workers = status_workers
        self.clock = clock
        self._pollers: dict[str, ProjectPoller] = {}

    def projects(self) -> list[WatchedProject]:
        return list(self._projects() if callable(self._projects) else self._projects)

    def policy(self) -> Policy:
        """Read each cycle: a subscription made in another process counts from the next poll."""
        routes = tuple(self._routes() if callable(self._routes) else self._routes)
        if self.outbox is None:
            routes = ()  # nobody would deliver them: queue nothing (else they all flood a channel later)
        return Policy(routes, self.burst, self.outage_polls, self.stuck_minutes)

    def _poller(self, project: WatchedProject) -> ProjectPoller:
        poller = self._pollers.get(project.info.id)
        if poller is None or poller.project != project:
            fixed = self.outbox.fixed_channel if self.outbox is not None else None
            poller = ProjectPoller(
                project, self.store, fixed_channel=fixed, status_workers=self.status_workers, clock=self.clock
            )
            self._pollers[project.info.id] = poller
        return poller

    def run_cycle(
        self,
        stop: threading.Event | None = None,
        may_send: Callable[[], bool] | None = None,
        period: float | None = None,
    ) -> CycleReport:
        """Poll every project (a few at once; one failing never disturbs another), then deliver.
        With `period` (the time until the next cycle is due), no send starts once the cycle has
        run that long, though delivery always gets half a period after the polls: a long queue
        (Slack's one message a second per channel, Retry-After waits) is worked off cycle by cycle
        and delays the next poll only when the polls themselves took more than half a period."""
        begun = time.monotonic()
        policy = self.policy()
        pollers = [self._poller(project) for project in self.projects()]
        reports = self._poll_all(pollers, policy, stop)
        self._maybe_prune()
        deadline = None if period is None else max(begun + period, time.monotonic() + period / 2)
        return CycleReport(tuple(reports), self.deliver(stop, may_send, deadline))

    def _poll_all(
        self, pollers: list[ProjectPoller], policy: Policy, stop: threading.Event | None = None
    ) -> list[ProjectReport]:
        def poll(poller: ProjectPoller) -> ProjectReport:
            try:
                report = poller.poll(policy)[0]
            except Exception as exc:  # a bug in one project's poll must not stop the others
                if stop is not None and stop.is_set():  # the store closed under a poll at shutdown
                    log.info(
                        "stopping: the poll of project %s was left unfinished (%s: %s)",
                        poller.project.info.name,
                        type(exc).__name__,
                        exc,
                        extra=log_context(project=poller.project.info.name),
                    )
                else:
                    log.exception(
                        "the poll of project %s failed",
                        poller.project.info.name,
                        extra=log_context(project=poller.project.info.name),
                    )
                report = ProjectReport(
                    poller.project.info.name, ok=False, error=f"{type(exc).__name__}: {exc}"
                )
            if self.on_poll is not None:
                self.on_poll(report)
            return report

        if len(pollers) <= 1:
            return [poll(p) for p in pollers]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(
            min(MAX_PROJECT_POLLS, len(pollers)), thread_name_prefix="kpsbot-poll"
        ) as pool:
            return list(pool.map(poll, pollers))

    def deliver(
        self,
        stop: threading.Event | None = None,
        may_send: Callable[[], bool] | None = None,
        deadline: float | None = None,
    ) -> DeliveryReport:
        if self.outbox is None:
            return DeliveryReport(0, self.store.pending_deliveries(), self.store.failed_deliveries())
        return self.outbox.deliver(stop, may_send, deadline)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no notification is mid-delivery (see Outbox.wait_idle)."""
        return self.outbox is None or self.outbox.wait_idle(timeout)

    def _maybe_prune(self) -> None:
        now = self.clock()
        last = float(self.store.get_meta("pruned_at", "0") or 0)
        if now - last >= PRUNE_EVERY:
            self.store.prune(now=now, retention_days=self.retention_days)
            self.store.set_meta("pruned_at", repr(now))
