"""Planning (pure): one project's poll, as read from KPS and the store, becomes what to store and
what to tell whom — task changes, events, and outbox entries routed to channels.

Each kind of news is a rule: a function from the poll to `Notice`s. Routing then gives every
channel the notices its subscriptions let through (once per channel), grouping a channel's
many notices of one kind into a summary. Delivery has the matching handler per kind
(watch/outbox.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from types import MappingProxyType
from typing import Any, NamedTuple

from kpsbot.kps.client import KpsError
from kpsbot.kps.models import RunningTask, TaskRecords, utc
from kpsbot.slack.text import action_label
from kpsbot.store import (
    EventRow,
    FinishedRow,
    NewTask,
    OutboxItem,
    PollWrite,
    ProjectState,
    StoredTask,
    TaskKey,
)
from kpsbot.watch.diff import LOOKUP_FAILED, UNKNOWN, Outcome, SnapshotDiff

SAMPLE = 10  # tasks listed in a summary
EMPTY: Mapping[Any, Any] = MappingProxyType({})  # the default of PollInput's mappings
STARTED, FINISHED, STUCK = "started", "finished", "stuck"

START_NOTES = {
    "baseline": "Already running when kpsbot started watching.",
    "burst": "Its start was in a summary of many tasks.",
    "later": "It started before this channel subscribed.",
}


# -- inputs -------------------------------------------------------------------------------------


class ProjectInfo(NamedTuple):
    """A project as the planner names it: `id` keys its rows, `name` is shown when `named`."""

    id: str
    name: str
    location: str  # region, or where the endpoint is, for the baseline message
    named: bool = False  # several projects are configured: every notification names its project

    @property
    def label(self) -> str | None:
        return self.name if self.named else None


class Route(NamedTuple):
    """A channel and what it wants to hear (a subscription, or KPSBOT_CHANNEL: everything)."""

    channel: str
    projects: tuple[str, ...] = ()  # project names; empty: every project
    actions: tuple[str, ...] = ()  # RESET / REPLACE / UNBIND; empty: every action
    failures_only: bool = False
    text: str = ""  # lower-case words that must all occur in server name, server ID or key pair
    since: float | None = None  # when the subscription was made (None: always)

    def wants_project(self, project: ProjectInfo) -> bool:
        return not self.projects or project.name in self.projects

    def wants(self, project: ProjectInfo, notice: Notice) -> bool:
        if not self.wants_project(project):
            return False
        if notice.task is None:
            # Outage and recovery reach every channel of the project; the baseline's "watching"
            # message all but failures-only ones (it promises starts that such a channel won't get).
            return notice.kind != "baseline" or not self.failures_only
        if self.actions and notice.task.action not in self.actions:
            return False
        if self.failures_only and not notice.failure:
            return False
        if self.text:
            task = notice.task
            haystack = (task.server_name.lower(), task.server_id.lower(), task.keypair_name.lower())
            if not all(any(word in value for value in haystack) for word in self.text.split()):
                return False
        return True


class PollInput(NamedTuple):
    """One project's poll: what KPS said (or the error), and what the store knew before."""

    project: ProjectInfo
    now: float
    state: ProjectState
    stored: Mapping[str, str]  # running task_id -> task_time, before this poll
    records: TaskRecords | None = None  # None: the poll failed
    error: KpsError | None = None
    diff: SnapshotDiff | None = None
    known: Mapping[TaskKey, StoredTask] = EMPTY  # stored rows of disappeared,
    # replaced and reappearing tasks
    outcomes: Mapping[TaskKey, Outcome] = EMPTY
    stuck: Sequence[StoredTask] = ()  # running tasks past the threshold, never alerted
    starts: Mapping[TaskKey, frozenset[str]] = EMPTY  # channels whose start
    # entry for the task exists (so a finish can wait for it and reply in its thread)
    last_seen: float | None = None  # the previous good poll of the project
    duration_ms: int = 0


class Policy(NamedTuple):
    """The planner's settings."""

    routes: tuple[Route, ...] = ()
    burst: int = 5
    outage_polls: int = 3
    stuck_minutes: int = 60


# -- what rules produce ----------------------------------------------------------------------------


class TaskChange(NamedTuple):
    """A task that started, finished or went stuck in one poll: the one value its event, its
    stored row and its notifications are all made from."""

    kind: str  # started | finished | stuck
    task: RunningTask
    outcome: Outcome | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    start_kind: str | None = None  # how its start was shown: message | burst | baseline
    first_seen: float | None = None

    @property
    def key(self) -> TaskKey:
        return self.task.task_id, self.task.task_time

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return max((self.finished_at - self.started_at).total_seconds(), 0.0)

    @property
    def failed(self) -> bool:
        return self.outcome is not None and self.outcome.result == "failed"

    def event(self, at: float) -> EventRow:
        outcome = self.outcome
        return EventRow(
            at=at,
            kind=self.kind,
            task_id=self.task.task_id,
            task_time=self.task.task_time,
            operate_type=self.task.operate_type,
            server_name=self.task.server_name,
            outcome=outcome.result if outcome and self.kind == FINISHED else None,
            duration_s=self.duration_s,
            error_code=outcome.error_code if outcome else None,
            error_msg=outcome.error_msg if outcome else None,
        )

    def finished_row(self, at: float, last_seen: float | None) -> FinishedRow:
        outcome = self.outcome or Outcome(UNKNOWN)
        return FinishedRow(
            key=self.key,
            outcome=outcome.result,
            finished_at=at,
            task_status=outcome.task_status,
            error_code=outcome.error_code,
            error_msg=outcome.error_msg,
            last_seen=last_seen,
        )

    def payload(self, project: ProjectInfo) -> dict[str, Any]:
        body: dict[str, Any] = {"task": self.task.to_api(), "project": project.label}
        if self.outcome is not None and self.kind == FINISHED:
            body.update(
                outcome=self.outcome.result,
                task_status=self.outcome.task_status,
                error_code=self.outcome.error_code,
                error_msg=self.outcome.error_msg,
                duration_s=self.duration_s,
                finished_at=self.finished_at.timestamp() if self.finished_at else None,
            )
        if self.kind == STUCK:
            body.update(running_s=self.duration_s)
        return body


class Notice(NamedTuple):
    """One piece of news for the channels that want it."""

    kind: str
    payload: Mapping[str, Any]
    change: TaskChange | None = None
    group: str | None = None  # notices of one group are summed up when a channel gets many

    @property
    def task(self) -> RunningTask | None:
        return self.change.task if self.change else None

    @property
    def failure(self) -> bool:
        """What a failures-only subscription lets through: failed finishes and stuck alerts."""
        return self.change is not None and (self.change.failed or self.change.kind == STUCK)


Rule = Callable[[PollInput, Policy, PollWrite], Iterable[Notice]]


def counts_by_action(tasks: Iterable[RunningTask]) -> dict[str, int]:
    return dict(Counter(action_label(t.action, t.operate_type) for t in tasks))


# -- the rules -----------------------------------------------------------------------------------


def baseline_rule(poll: PollInput, policy: Policy, write: PollWrite) -> Iterable[Notice]:
    """The first good poll of a project: its tasks are recorded as already running, one summary."""
    if poll.records is None or poll.state.baseline_at is not None:
        return []
    records = poll.records
    write.new_tasks = [
        NewTask(records[task_id], "baseline") for task_id in records.keys() if task_id not in poll.stored
    ]
    payload = {
        "project_id": poll.project.id,
        "project": poll.project.label,
        "location": poll.project.location,
        "count": len(records),
        "counts": counts_by_action(records.values()),
    }
    return [Notice("baseline", payload)]


def start_rule(poll: PollInput, policy: Policy, write: PollWrite) -> Iterable[Notice]:
    if poll.diff is None or poll.state.baseline_at is None:
        return []
    notices = []
    for task in poll.diff.appeared:
        previous = poll.known.get((task.task_id, task.task_time))
        if previous is not None:
            # Seen before and taken as finished (a status that said so, then the list shows it
            # again): it runs on quietly, under its first start.
            write.new_tasks.append(NewTask(task, previous.start_kind or "message"))
            continue
        change = TaskChange(STARTED, task, started_at=task.started_at)
        write.new_tasks.append(NewTask(task, "message"))
        write.events.append(change.event(poll.now))
        notices.append(Notice(STARTED, change.payload(poll.project), change, group=STARTED))
    return notices


def finish_rule(poll: PollInput, policy: Policy, write: PollWrite) -> Iterable[Notice]:
    """Disappeared and replaced tasks whose outcome is known; the others wait for the next poll."""
    if poll.diff is None or poll.state.baseline_at is None:
        return []
    notices = []
    for key in [*poll.diff.disappeared, *poll.diff.replaced]:
        row = poll.known.get(key)
        outcome = poll.outcomes.get(key)
        if row is None or outcome is None:
            continue
        if outcome.result == LOOKUP_FAILED:
            write.lookup_failed.append(key)
            continue
        if not outcome.finished:  # still READY_/RUNNING_: the list missed it
            if row.lookup_failures:
                write.lookup_ok.append(key)  # the failures must be in a row
            continue
        task = row.task()
        change = TaskChange(
            FINISHED,
            task,
            outcome,
            started_at=task.started_at or utc(row.first_seen),
            finished_at=utc(poll.now),
            start_kind=row.start_kind,
            first_seen=row.first_seen,
        )
        write.finished.append(change.finished_row(poll.now, poll.last_seen))
        write.events.append(change.event(poll.now))
        notices.append(Notice(FINISHED, change.payload(poll.project), change, group=FINISHED))
    return notices


def stuck_rule(poll: PollInput, policy: Policy, write: PollWrite) -> Iterable[Notice]:
    """Tasks still running KPSBOT_STUCK_MINUTES after their task_time: one alert each, ever."""
    if not policy.stuck_minutes or poll.records is None:
        return []
    missing = set(poll.diff.disappeared) if poll.diff is not None else set()
    over = set(poll.diff.replaced) if poll.diff is not None else set()
    notices = []
    for row in poll.stuck:
        if row.key in over or (row.key in missing and not _still_running(poll.outcomes.get(row.key))):
            continue  # not in this list, and not known to be running: "still running" would be a guess
        task = row.task()
        change = TaskChange(STUCK, task, started_at=task.started_at, finished_at=utc(poll.now))
        write.stuck.append(row.key)
        write.events.append(change.event(poll.now))
        payload = {**change.payload(poll.project), "minutes": policy.stuck_minutes}
        notices.append(Notice(STUCK, payload, change, group=STUCK))
    return notices


def _still_running(outcome: Outcome | None) -> bool:
    """A task missing from the list whose status says it runs on (the list missed it)."""
    return outcome is not None and outcome.result != LOOKUP_FAILED and not outcome.finished


def outage_rule(poll: PollInput, policy: Policy, write: PollWrite) -> Iterable[Notice]:
    """Failed polls in a row: the state counts them, and one message says so at the threshold."""
    state = poll.state
    if poll.error is None:
        return []
    error = poll.error
    failing_since = state.failing_since if state.failing_since is not None else poll.now
    announce = state.failures + 1 >= policy.outage_polls and not state.announced
    write.state = state._replace(
        failures=state.failures + 1,
        failing_since=failing_since,
        last_error=str(error),
        auth_rejected=error.auth_rejected,
        announced=state.announced or announce,
    )
    if not announce:
        return []
    payload = {
        "since": failing_since,
        "polls": state.failures + 1,
        "last_error": str(error),
        "auth_rejected": error.auth_rejected,
        "project": poll.project.label,
    }
    return [Notice("outage", payload)]


def recovery_rule(poll: PollInput, policy: Policy, write: PollWrite) -> Iterable[Notice]:
    """A good poll ends an outage: the state is cleared, and an announced outage is said to be over."""
    state = poll.state
    if poll.records is None:
        return []
    write.state = (write.state or state)._replace(
        baseline_at=state.baseline_at if state.baseline_at is not None else poll.now,
        failures=0,
        failing_since=None,
        last_error=None,
        auth_rejected=False,
        announced=False,
    )
    if write.state == state:
        write.state = None  # the common case: nothing to write
    if not state.announced or state.failing_since is None:
        return []
    payload = {
        "since": state.failing_since,
        "until": poll.now,
        "polls": state.failures,
        "project": poll.project.label,
    }
    return [Notice("recovered", payload)]


RULES: tuple[Rule, ...] = (baseline_rule, start_rule, finish_rule, stuck_rule, outage_rule, recovery_rule)


# -- routing and grouping -------------------------------------------------------------------------


def _key(kind: str, project: ProjectInfo, what: str, channel: str) -> str:
    return f"{kind}:{project.id}:{what}:{channel}"


def start_key(project: ProjectInfo, task_key: TaskKey, channel: str) -> str:
    """The dedup key of a task's start message in a channel (a finish waits for it)."""
    return _key(STARTED, project, f"{task_key[0]}:{task_key[1]}", channel)


def _start_note(change: TaskChange, route: Route) -> str:
    if change.start_kind == "baseline":
        return START_NOTES["baseline"]
    if route.since is not None and change.first_seen is not None and change.first_seen < route.since:
        return START_NOTES["later"]
    return START_NOTES["burst"]


def _task_items(notice: Notice, route: Route, poll: PollInput) -> list[OutboxItem]:
    change = notice.change
    assert change is not None
    project, channel = poll.project, route.channel
    task_id, task_time = change.key
    what = f"{task_id}:{task_time}"
    has_start = channel in poll.starts.get(change.key, frozenset())
    after = start_key(project, change.key, channel) if has_start else None
    ids = {"task_id": task_id, "task_time": task_time}
    if notice.kind == STARTED:
        return [OutboxItem(STARTED, _key(STARTED, project, what, channel), channel, notice.payload, **ids)]
    if notice.kind == FINISHED:
        payload = dict(notice.payload)
        if not has_start:
            payload["start_note"] = _start_note(change, route)
        items = [
            OutboxItem(FINISHED, _key(FINISHED, project, what, channel), channel, payload, after=after, **ids)
        ]
        if has_start:
            edit = _key("finished_edit", project, what, channel)
            items.append(OutboxItem("finished_edit", edit, channel, payload, after=after, **ids))
        return items
    return [
        OutboxItem(
            notice.kind,
            _key(notice.kind, project, what, channel),
            channel,
            notice.payload,
            after=after,
            **ids,
        )
    ]


def _summary(group: str, notices: Sequence[Notice], poll: PollInput, channel: str) -> OutboxItem:
    changes = [n.change for n in notices if n.change is not None]
    payload: dict[str, Any] = {
        "total": len(changes),
        "counts": counts_by_action(c.task for c in changes),
        "sample": [_sample(c) for c in changes[:SAMPLE]],
        "project": poll.project.label,
    }
    if group == FINISHED:
        payload["outcomes"] = dict(Counter((c.outcome or Outcome(UNKNOWN)).result for c in changes))
    if group == STUCK:
        payload["minutes"] = notices[0].payload.get("minutes")
    kind = f"{group}_burst"
    return OutboxItem(kind, _key(kind, poll.project, f"{poll.now:.6f}", channel), channel, payload)


def _sample(change: TaskChange) -> dict[str, Any]:
    item: dict[str, Any] = {"task": change.task.to_api()}
    if change.kind == FINISHED:
        item["outcome"] = (change.outcome or Outcome(UNKNOWN)).result
    return item


def route(notices: Sequence[Notice], poll: PollInput, policy: Policy) -> list[OutboxItem]:
    """Outbox entries: each notice once per channel that wants it; a channel's notices of one group
    beyond `policy.burst` become one summary. Routes of one channel are merged (a notice several
    of its subscriptions match is posted once)."""
    by_channel: dict[str, list[tuple[Notice, Route]]] = {}
    for notice in notices:
        seen: set[str] = set()
        for candidate in policy.routes:
            if candidate.channel in seen or not candidate.wants(poll.project, notice):
                continue
            seen.add(candidate.channel)
            by_channel.setdefault(candidate.channel, []).append((notice, candidate))
    items: list[OutboxItem] = []
    for channel, pairs in by_channel.items():
        grouped: dict[str, list[Notice]] = {}
        for notice, _ in pairs:
            if notice.group is not None:
                grouped.setdefault(notice.group, []).append(notice)
        summed = {group for group, members in grouped.items() if len(members) > policy.burst}
        for group in summed:
            items.append(_summary(group, grouped[group], poll, channel))
        for notice, chosen in pairs:
            if notice.group in summed:
                if notice.kind == FINISHED:  # its start message still shows the outcome
                    items.extend(i for i in _task_items(notice, chosen, poll) if i.kind == "finished_edit")
                continue
            if notice.change is None:
                what = f"{notice.payload.get('since', poll.now)!r}" if notice.kind != "baseline" else "first"
                key = _key(notice.kind, poll.project, what, channel)
                items.append(OutboxItem(notice.kind, key, channel, notice.payload))
            else:
                items.extend(_task_items(notice, chosen, poll))
    return items


def plan_poll(poll: PollInput, policy: Policy) -> PollWrite:
    """Everything this poll stores and sends, in one PollWrite (written in one transaction)."""
    ok = poll.records is not None
    write = PollWrite(
        project=poll.project.id,
        at=poll.now,
        ok=ok,
        duration_ms=poll.duration_ms,
        error=str(poll.error) if poll.error is not None else None,
        task_count=len(poll.records) if poll.records is not None else None,
        skipped_rows=len(poll.records.skipped) if poll.records is not None else 0,
    )
    notices: list[Notice] = []
    for rule in RULES:
        notices.extend(rule(poll, policy, write))
    write.outbox = route(notices, poll, policy)
    return write
