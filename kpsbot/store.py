"""SQLite store for the watcher (the only SQL): snapshots, events, outbox, threads, subscriptions,
project state, polls and the lease, with versioned migrations."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, NamedTuple

from kpsbot.kps.models import TASK_FIELDS, RunningTask, parse_task_time, utc

if TYPE_CHECKING:
    from sqlite_utils import Database

log = logging.getLogger(__name__)

DEFAULT_LEASE = "watcher"
_CHUNK = 400  # keys per `IN (...)` query (twice in some), well below SQLite's variable limit
LEGACY_PROJECT = ""  # rows of a kpsbot 0.1 database whose project could not be told (see adopt_legacy)

TaskKey = tuple[str, str]  # (task_id, task_time): a task within its project (SPEC §1, "Task identity")


# -- transactions ------------------------------------------------------------------------------


class _Connection(sqlite3.Connection):
    """A connection whose transactions belong to the Store.

    sqlite-utils 3.x wraps its writes in `with conn:`, which would COMMIT the store's open
    `BEGIN IMMEDIATE` half-way (and the store's own COMMIT then fails). Inside a store
    transaction `with conn:` therefore joins it instead; outside one it behaves as usual.
    """

    store_depth = 0

    def __enter__(self) -> _Connection:
        if self.store_depth:
            return self
        return super().__enter__()

    def __exit__(self, *exc: Any) -> Any:
        if self.store_depth:
            return False
        return super().__exit__(*exc)


# -- schema and migrations -----------------------------------------------------------------------
#
# Each migration moves the schema up by one version and runs inside the same BEGIN IMMEDIATE
# transaction as the version bump, so two processes starting on one file never migrate twice.


def _v1(db: Database) -> None:
    db.table("tasks").create(
        {
            "task_id": str,
            "operate_type": str,
            "task_time": str,
            "server_name": str,
            "server_id": str,
            "keypair_name": str,
            "first_seen": float,
            "last_seen": float,
            "state": str,  # running | finished
            "start_kind": str,  # message | burst | baseline
            "start_channel": str,
            "start_ts": str,
            "finished_at": float,
            "outcome": str,
            "task_status": str,
            "error_code": str,
            "error_msg": str,
        },
        pk="task_id",
        not_null={"state"},
    )
    db.table("tasks").create_index(["state"])
    db.table("events").create(
        {
            "id": int,
            "at": float,
            "kind": str,
            "task_id": str,
            "operate_type": str,
            "server_name": str,
            "outcome": str,
            "duration_s": float,
            "error_code": str,
            "error_msg": str,
        },
        pk="id",
    )
    db.table("events").create_index(["at"])
    db.table("outbox").create(
        {
            "id": int,
            "created_at": float,
            "kind": str,
            "dedup_key": str,
            "task_id": str,
            "payload": str,
            "status": str,
            "attempts": int,
            "next_attempt_at": float,
            "sent_at": float,
            "result_channel": str,
            "result_ts": str,
            "last_error": str,
        },
        pk="id",
        not_null={"kind", "dedup_key", "status"},
        defaults={"status": "pending", "attempts": 0},
    )
    db.table("outbox").create_index(["dedup_key"], unique=True)
    db.table("outbox").create_index(["status", "next_attempt_at"])
    db.table("polls").create(
        {"id": int, "at": float, "ok": int, "error": str, "task_count": int, "duration_ms": int},
        pk="id",
    )
    db.table("polls").create_index(["at"])
    db.table("meta").create({"key": str, "value": str}, pk="key")


def _v2(db: Database) -> None:
    # Unparseable rows are counted per poll; transient status-lookup failures are counted per
    # task; the lease lets two `kpsbot run` processes share one database.
    db.table("polls").add_column("skipped_rows", int, not_null_default=0)
    db.table("tasks").add_column("lookup_failures", int, not_null_default=0)
    db.table("lease").create({"name": str, "owner": str, "expires_at": float}, pk="name")


# The poll fast path's columns of project_state. Schema 3 creates them, but development builds of
# 0.2 wrote schema-3 databases before they existed: _v4 adds what such a database lacks.
FAST_PATH_COLUMNS = {
    "snapshot_digest": int,
    "snapshot_count": int,
    "checked_at": float,
    "listing_fingerprint": int,
}


def _v3(db: Database) -> None:
    """kpsbot 0.2: several projects, a task is (project, task_id, task_time), one start message
    (thread) per task and channel, subscriptions, per-channel delivery state, stuck alerts, the
    outage state as a row per project, and a fenced lease."""
    legacy = _legacy_project(db)
    conn = db.conn
    # Tasks: keyed by project, task_id and task_time; start messages move to `threads`.
    db.table("threads").create(
        {"project": str, "task_id": str, "task_time": str, "channel": str, "ts": str, "posted_at": float},
        pk=("project", "task_id", "task_time", "channel"),
        not_null={"ts"},
    )
    conn.execute(
        "insert into threads (project, task_id, task_time, channel, ts, posted_at) "
        "select ?, task_id, coalesce(task_time, ''), start_channel, start_ts, first_seen from tasks "
        "where start_ts is not null and start_channel is not null",
        (legacy,),
    )
    db.table("tasks").add_column("project", str)
    db.table("tasks").add_column("task_ms", int)
    db.table("tasks").add_column("stuck_at", float)
    conn.execute("update tasks set project = ?, task_time = coalesce(task_time, '')", (legacy,))
    for task_id, task_time in conn.execute("select task_id, task_time from tasks").fetchall():
        when = parse_task_time(task_time)
        if when is not None:
            conn.execute(
                "update tasks set task_ms = ? where task_id = ?", (int(when.timestamp() * 1000), task_id)
            )
    db.table("tasks").transform(
        pk=("project", "task_id", "task_time"),
        drop={"start_channel", "start_ts"},
        not_null={"project", "task_id", "task_time", "state"},
    )
    db.table("tasks").create_index(["project", "state"], index_name="tasks_project_state")
    conn.execute(
        "create index tasks_stuck_due on tasks (project, task_ms) "
        "where state = 'running' and stuck_at is null"
    )
    # Events, polls and outbox entries belong to a project.
    db.table("events").add_column("project", str)
    db.table("events").add_column("task_time", str)
    conn.execute("update events set project = ?", (legacy,))
    db.table("events").create_index(["project", "kind", "at"], index_name="events_project_kind_at")
    db.table("polls").add_column("project", str)
    conn.execute("update polls set project = ?", (legacy,))
    db.table("polls").create_index(["project", "ok", "id"], index_name="polls_project_ok_id")
    db.table("outbox").add_column("project", str)
    db.table("outbox").add_column("task_time", str)
    db.table("outbox").add_column("channel", str)  # null: the fixed KPSBOT_CHANNEL (entries of 0.1)
    db.table("outbox").add_column("after", str)  # the dedup key of the entry this one waits for
    conn.execute("update outbox set project = ?", (legacy,))
    conn.execute(
        "update outbox set task_time = (select t.task_time from tasks t where t.task_id = outbox.task_id) "
        "where task_id is not null"
    )
    conn.execute(
        "update outbox set after = 'started:' || task_id "
        "where kind in ('finished', 'finished_edit') and task_id is not null"
    )
    conn.execute("update outbox set channel = result_channel where result_channel is not null")
    _rekey_legacy_entries(conn, legacy)
    db.table("outbox").create_index(["channel", "status"], index_name="outbox_channel_status")
    db.table("outbox").create_index(["project", "task_id"], index_name="outbox_project_task")
    # The outage state and the baseline, typed, per project (they were meta keys).
    db.table("project_state").create(
        {
            "project": str,
            "baseline_at": float,
            "failures": int,
            "failing_since": float,
            "last_error": str,
            "auth_rejected": int,
            "announced": int,
            **FAST_PATH_COLUMNS,
        },
        pk="project",
        not_null={"failures", "auth_rejected", "announced"},
        defaults={"failures": 0, "auth_rejected": 0, "announced": 0},
    )
    meta = dict(conn.execute("select key, value from meta").fetchall())
    if "baseline_at" in meta or "outage_failures" in meta:
        conn.execute(
            "insert into project_state (project, baseline_at, failures, failing_since, last_error, "
            "auth_rejected, announced) values (?, ?, ?, ?, ?, ?, ?)",
            (
                legacy,
                _float(meta.get("baseline_at")),
                int(meta.get("outage_failures") or 0),
                _float(meta.get("outage_since")),
                meta.get("outage_last_error"),
                int(meta.get("outage_auth") == "1"),
                int(bool(meta.get("outage_announced"))),
            ),
        )
    conn.execute(
        "delete from meta where key in ('baseline_at', 'outage_failures', 'outage_since', "
        "'outage_last_error', 'outage_auth', 'outage_announced')"
    )
    # Project IDs looked up in IAM are kept, so a restart does not depend on IAM.
    db.table("projects").create(
        {"name": str, "region": str, "id": str, "source": str, "resolved_at": float},
        pk="name",
        not_null={"id", "source"},
    )
    db.table("subscriptions").create(
        {
            "id": int,
            "channel": str,
            "projects": str,  # JSON list of project names; [] = every project
            "actions": str,  # JSON list of RESET/REPLACE/UNBIND; [] = every action
            "failures_only": int,
            "text": str,
            "created_by": str,
            "created_at": float,
            "active": int,  # 0 until its confirmation is in the channel
        },
        pk="id",
        not_null={"channel", "projects", "actions", "failures_only", "text", "active"},
        defaults={"active": 1},
    )
    db.table("subscriptions").create_index(["channel"])
    db.table("channels").create(
        {"channel": str, "paused_until": float, "failing_error": str, "failing_since": float},
        pk="channel",
    )
    # The lease is fenced: its generation changes whenever another owner takes it.
    db.table("lease").add_column("generation", int, not_null_default=0)


_TASK_KINDS = "('started', 'finished', 'finished_edit')"  # the 0.1 entries of one task's run


def _rekey_legacy_entries(conn: sqlite3.Connection, project: str) -> None:
    """Give 0.1's task entries (`started:<task_id>`) the keys 0.2 gives them
    (`started:<project>:<task_id>:<task_time>:<channel>`), and their `after` the new key of the start.

    0.2 makes a task's finish (and edit, and stuck alert) wait for its start entry by that key: a start
    0.1 left pending in its retry backoff under the old key would not be waited for, so the finish
    would go first, standalone, and the start message posted after it would never be edited. 0.1
    posted to one channel, the one its sent entries went to; without one (nothing was ever sent) the
    entries keep their keys.
    """
    channels = conn.execute(
        "select distinct result_channel from outbox where result_channel is not null"
    ).fetchall()
    if len(channels) != 1:
        return
    channel = channels[0][0]
    legacy = f"kind in {_TASK_KINDS} and task_id is not null and task_time is not null"
    conn.execute(
        "update outbox set after = 'started:' || ? || ':' || task_id || ':' || task_time || ':' || "
        f"coalesce(channel, ?) where {legacy} and after = 'started:' || task_id",
        (project, channel),
    )
    conn.execute(
        "update outbox set dedup_key = kind || ':' || ? || ':' || task_id || ':' || task_time || ':' || "
        f"coalesce(channel, ?) where {legacy} and dedup_key = kind || ':' || task_id",
        (project, channel),
    )


def _legacy_project(db: Database) -> str:
    """The project ID a 0.1 database watched: its baseline notification names it."""
    row = db.conn.execute("select payload from outbox where kind = 'baseline' order by id limit 1").fetchone()
    try:
        project = json.loads(row[0]).get("project_id") if row else None
    except (ValueError, AttributeError):
        project = None
    return project if isinstance(project, str) and project else LEGACY_PROJECT


def _float(value: str | None) -> float | None:
    try:
        return None if value is None else float(value)
    except ValueError:
        return None


def _v4(db: Database) -> None:
    """The snapshot digest and listing fingerprint in every schema-3 database (see above)."""
    state = db.table("project_state")
    for name, kind in FAST_PATH_COLUMNS.items():
        if name not in state.columns_dict:
            state.add_column(name, kind)


MIGRATIONS: tuple[Callable[[Database], None], ...] = (_v1, _v2, _v3, _v4)
SCHEMA_VERSION = len(MIGRATIONS)


# -- records ------------------------------------------------------------------------------------
#
# The pipeline's records (here, in kpsbot.watch and kpsbot.kps.models) are NamedTuples: immutable
# like frozen dataclasses, but free to define. A frozen dataclass compiles its generated methods
# when its module is imported, about 0.6 ms a class: 17 ms of every `kpsbot watch --once` for 29
# classes, a tenth of a no-change cycle of 10,000 tasks. PollWrite, which the rules fill in, stays a
# dataclass.


class StoredTask(NamedTuple):
    project: str
    task_id: str
    task_time: str
    operate_type: str
    server_name: str
    server_id: str
    keypair_name: str
    first_seen: float
    last_seen: float | None
    state: str
    start_kind: str | None
    lookup_failures: int = 0
    stuck_at: float | None = None

    @property
    def key(self) -> TaskKey:
        return self.task_id, self.task_time

    def task(self) -> RunningTask:
        return RunningTask(*(getattr(self, name) or "" for name in TASK_FIELDS))


_TASK_FIELDS = StoredTask._fields
_TASK_COLUMNS = ", ".join(_TASK_FIELDS)


class NewTask(NamedTuple):
    """A task seen for the first time; `start_kind` says how its start was shown."""

    task: RunningTask
    start_kind: str  # message | burst | baseline


class FinishedRow(NamedTuple):
    key: TaskKey
    outcome: str
    finished_at: float
    task_status: str = ""
    error_code: str = ""
    error_msg: str = ""
    last_seen: float | None = None


class EventRow(NamedTuple):
    at: float
    kind: str  # started | finished | stuck
    task_id: str
    task_time: str
    operate_type: str
    server_name: str
    outcome: str | None = None
    duration_s: float | None = None
    error_code: str | None = None
    error_msg: str | None = None


class OutboxItem(NamedTuple):
    """A notification to send: `channel` is where, `after` the dedup key of the entry it waits for."""

    kind: str
    dedup_key: str
    channel: str
    payload: Mapping[str, Any]
    task_id: str | None = None
    task_time: str | None = None
    after: str | None = None


class OutboxEntry(NamedTuple):
    id: int
    project: str | None
    channel: str | None
    kind: str
    dedup_key: str
    task_id: str | None
    task_time: str | None
    after: str | None
    payload: dict
    status: str
    attempts: int
    created_at: float
    next_attempt_at: float | None
    last_error: str | None


class ProjectState(NamedTuple):
    """What the watcher remembers of a project between polls: its baseline and any outage."""

    baseline_at: float | None = None
    failures: int = 0  # failed polls in a row
    failing_since: float | None = None
    last_error: str | None = None
    auth_rejected: bool = False
    announced: bool = False  # the "unreachable" message was queued
    # The running snapshot's digest and size (kpsbot.kps.models.key_digest), and when they were last
    # checked against the snapshot itself: a poll whose tasks have the same digest changed nothing.
    snapshot_digest: int | None = None
    snapshot_count: int | None = None
    checked_at: float | None = None
    # The fingerprint of the last listing (kpsbot.kps.models.listing_fingerprint) that matched the
    # snapshot and had no unusable row: the same bytes again cannot hold a change.
    listing_fingerprint: int | None = None

    @property
    def outage(self) -> bool:
        return self.failures > 0


_STATE_COLUMNS = ", ".join(ProjectState._fields)


@dataclass
class PollWrite:
    """Everything one poll of one project changes, written in a single transaction."""

    project: str
    at: float
    ok: bool
    duration_ms: int = 0
    error: str | None = None
    task_count: int | None = None
    skipped_rows: int = 0
    new_tasks: list[NewTask] = field(default_factory=list)
    finished: list[FinishedRow] = field(default_factory=list)
    lookup_failed: list[TaskKey] = field(default_factory=list)  # still candidates; counter + 1
    lookup_ok: list[TaskKey] = field(default_factory=list)  # found still running; counter back to 0
    stuck: list[TaskKey] = field(default_factory=list)  # alerted as stuck, once
    events: list[EventRow] = field(default_factory=list)
    outbox: list[OutboxItem] = field(default_factory=list)
    state: ProjectState | None = None  # None: unchanged


class PollRecord(NamedTuple):
    project: str | None
    at: datetime
    ok: bool
    error: str | None
    task_count: int | None
    skipped_rows: int
    duration_ms: int


class Subscription(NamedTuple):
    id: int
    channel: str
    projects: tuple[str, ...]  # empty: every project
    actions: tuple[str, ...]  # empty: every action
    failures_only: bool
    text: str
    created_by: str | None = None
    created_at: float | None = None


class ChannelState(NamedTuple):
    channel: str
    paused_until: float | None
    failing_error: str | None
    failing_since: float | None


class KnownProject(NamedTuple):
    name: str
    region: str | None
    id: str
    source: str  # setting | iam
    resolved_at: float | None


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _task_ms(task_time: str) -> int | None:
    when = parse_task_time(task_time)
    return None if when is None else int(when.timestamp() * 1000)


class Store:
    """One SQLite file; safe to share between threads (one connection behind a lock)."""

    def __init__(self, path: str | os.PathLike, *, timeout: float = 10.0) -> None:
        self.path = os.fspath(path)
        if self.path != ":memory:":
            _create_private(self.path)
        self.conn = sqlite3.connect(
            self.path, timeout=timeout, check_same_thread=False, isolation_level=None, factory=_Connection
        )
        self._db: Database | None = None
        self._lock = threading.RLock()
        try:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
            self.migrate()
        except BaseException:
            self.conn.close()
            raise
        if self.path != ":memory:":
            for suffix in ("-wal", "-shm"):
                _chmod_private(self.path + suffix)

    @property
    def db(self) -> Database:
        """sqlite-utils over the same connection, for migrations and bulk inserts.

        Imported on first use: a poll where nothing changed never needs it, and the import
        costs more than that poll's own SQL.
        """
        with self._lock:
            if self._db is None:
                from sqlite_utils import Database

                self._db = Database(self.conn, execute_plugins=False)
            return self._db

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, the one way this store writes: the write lock is taken up
        front, so read-then-write is atomic across processes. Nested calls join the outer one."""
        with self._lock:
            conn = self.conn
            assert isinstance(conn, _Connection)
            if conn.store_depth:
                conn.store_depth += 1
                try:
                    yield conn
                finally:
                    conn.store_depth -= 1
                return
            conn.execute("BEGIN IMMEDIATE")
            conn.store_depth = 1
            try:
                yield conn
            except BaseException:
                conn.store_depth = 0
                conn.execute("ROLLBACK")
                raise
            conn.store_depth = 0
            conn.execute("COMMIT")

    def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[dict]:
        """A SELECT's rows as dicts (what sqlite-utils' `db.query` gives, without importing it)."""
        with self._lock:
            cursor = self.conn.execute(sql, tuple(params))
            keys = [column[0] for column in cursor.description]
            return [dict(zip(keys, row)) for row in cursor]

    def _value(self, sql: str, params: Iterable[Any] = ()) -> Any:
        with self._lock:
            row = self.conn.execute(sql, tuple(params)).fetchone()
        return row[0] if row else None

    # -- schema -----------------------------------------------------------------------------------

    def _has_table(self, name: str) -> bool:
        query = "select 1 from sqlite_master where type = 'table' and name = ?"
        return self._value(query, [name]) is not None

    @property
    def schema_version(self) -> int:
        with self._lock:
            if not self._has_table("schema_version"):
                return 0
            return self._value("select max(version) from schema_version") or 0

    def migrate(self, target: int = SCHEMA_VERSION) -> None:
        with self.transaction():
            if not self._has_table("schema_version"):
                self.db.table("schema_version").create({"version": int, "migrated_at": float})
            current = self.schema_version
            if current > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path} has schema version {current}, newer than this kpsbot "
                    f"understands ({SCHEMA_VERSION}): upgrade kpsbot"
                )
            for version in range(current + 1, target + 1):
                MIGRATIONS[version - 1](self.db)
                self.db.table("schema_version").insert({"version": version, "migrated_at": time.time()})
                # a new file is simply created; only upgrades of an existing one are news
                log.log(
                    logging.INFO if current else logging.DEBUG,
                    "migrated %s to schema version %d",
                    self.path,
                    version,
                )

    def adopt_legacy(self, project: str) -> bool:
        """Give the rows of a 0.1 database whose project was unknown to `project` (the one project
        configured), so its snapshot, outbox and threads carry on. True if there were any."""
        with self.transaction() as conn:
            if not conn.execute(
                "select 1 from project_state where project = ? union all "
                "select 1 from tasks where project = ? limit 1",
                (LEGACY_PROJECT, LEGACY_PROJECT),
            ).fetchone():
                return False
            # Keys _rekey_legacy_entries made name the project: `started::<task_id>:…` until now.
            conn.execute(
                "update outbox set dedup_key = kind || ':' || ? || substr(dedup_key, length(kind) + 2) "
                f"where project = ? and kind in {_TASK_KINDS} and substr(dedup_key, 1, length(kind) + 2) = "
                "kind || '::'",
                (project, LEGACY_PROJECT),
            )
            conn.execute(
                "update outbox set after = 'started:' || ? || substr(after, 9) "
                "where project = ? and substr(after, 1, 9) = 'started::'",
                (project, LEGACY_PROJECT),
            )
            for table in ("tasks", "threads", "events", "polls", "outbox", "project_state"):
                conn.execute(f"update {table} set project = ? where project = ?", (project, LEGACY_PROJECT))
        log.info("the snapshot of kpsbot 0.1 now belongs to project %s", project)
        return True

    # -- projects -------------------------------------------------------------------------------

    def known_projects(self) -> dict[str, KnownProject]:
        rows = self._rows("select name, region, id, source, resolved_at from projects")
        return {row["name"]: KnownProject(**row) for row in rows}

    def remember_project(self, name: str, region: str | None, project_id: str, source: str) -> None:
        with self.transaction() as conn:
            conn.execute(
                "insert or replace into projects (name, region, id, source, resolved_at) "
                "values (?, ?, ?, ?, ?)",
                (name, region, project_id, source, time.time()),
            )

    def project_state(self, project: str) -> ProjectState:
        rows = self._rows(f"select {_STATE_COLUMNS} from project_state where project = ?", [project])
        if not rows:
            return ProjectState()
        row = rows[0]
        return ProjectState(
            **{**row, "auth_rejected": bool(row["auth_rejected"]), "announced": bool(row["announced"])}
        )

    def project_states(self) -> dict[str, ProjectState]:
        projects = [row["project"] for row in self._rows("select project from project_state")]
        return {project: self.project_state(project) for project in projects}

    # -- snapshot -------------------------------------------------------------------------------

    def running_snapshot(self, project: str) -> dict[str, str]:
        """task_id -> task_time of the project's running tasks (one run per task_id at a time)."""
        with self._lock:
            cursor = self.conn.execute(
                "select task_id, task_time from tasks where project = ? and state = 'running'", (project,)
            )
            return dict(cursor.fetchall())

    def tasks(self, project: str, keys: Iterable[TaskKey]) -> dict[TaskKey, StoredTask]:
        found: dict[TaskKey, StoredTask] = {}
        columns = ", ".join(f"t.{name}" for name in _TASK_FIELDS)
        for chunk in _chunks(list(keys)):
            # A join on the primary key: `(task_id = ? and task_time = ?) or …` would scan the project.
            wanted = ", ".join("(?, ?)" for _ in chunk)
            params: list[Any] = [value for key in chunk for value in key]
            params.append(project)
            for row in self._rows(
                f"with wanted (task_id, task_time) as (values {wanted}) select {columns} from wanted w "
                "join tasks t on t.project = ? and t.task_id = w.task_id and t.task_time = w.task_time",
                params,
            ):
                task = StoredTask(**row)
                found[task.key] = task
        return found

    def task(self, project: str, task_id: str, task_time: str) -> StoredTask | None:
        return self.tasks(project, [(task_id, task_time)]).get((task_id, task_time))

    def running_tasks(self, project: str | None = None) -> list[StoredTask]:
        where = "state = 'running'" + (" and project = ?" if project is not None else "")
        params = [project] if project is not None else []
        return [
            StoredTask(**row)
            for row in self._rows(f"select {_TASK_COLUMNS} from tasks where {where}", params)
        ]

    def running_summary(
        self, project: str, *, stuck_before_ms: int | None = None
    ) -> tuple[dict[str, int], int]:
        """The project's running tasks counted by operate_type, and how many started before the cutoff."""
        with self._lock:
            counts = dict(
                self.conn.execute(
                    "select operate_type, count(*) from tasks where project = ? and state = 'running' "
                    "group by operate_type",
                    (project,),
                ).fetchall()
            )
            stuck = 0
            if stuck_before_ms is not None:
                stuck = self.conn.execute(
                    "select count(*) from tasks where project = ? and state = 'running' and task_ms <= ?",
                    (project, stuck_before_ms),
                ).fetchone()[0]
        return counts, stuck

    def stuck_candidates(self, project: str, started_before_ms: int, limit: int = 10_000) -> list[StoredTask]:
        """Running tasks that started before the cutoff and were never alerted as stuck."""
        rows = self._rows(
            f"select {_TASK_COLUMNS} from tasks where project = ? "
            "and state = 'running' and stuck_at is null and task_ms <= ? order by task_ms limit ?",
            [project, started_before_ms, limit],
        )
        return [StoredTask(**row) for row in rows]

    def record_poll(self, poll: PollWrite) -> int:
        """Write a poll with its snapshot changes, events and outbox entries in one transaction."""
        project = poll.project
        with self.transaction() as conn:
            poll_id = conn.execute(
                "insert into polls (project, at, ok, error, task_count, skipped_rows, duration_ms) "
                "values (?, ?, ?, ?, ?, ?, ?)",
                (
                    project,
                    poll.at,
                    int(poll.ok),
                    poll.error,
                    poll.task_count,
                    poll.skipped_rows,
                    poll.duration_ms,
                ),
            ).lastrowid
            if poll.new_tasks:
                conn.executemany(
                    "insert or replace into tasks (project, task_id, task_time, operate_type, server_name, "
                    "server_id, keypair_name, task_ms, first_seen, last_seen, state, start_kind, "
                    "lookup_failures) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, 0)",
                    [
                        (
                            project,
                            t.task.task_id,
                            t.task.task_time,
                            t.task.operate_type,
                            t.task.server_name,
                            t.task.server_id,
                            t.task.keypair_name,
                            _task_ms(t.task.task_time),
                            poll.at,
                            poll.at,
                            t.start_kind,
                        )
                        for t in poll.new_tasks
                    ],
                )
            if poll.finished:
                conn.executemany(
                    "update tasks set state = 'finished', outcome = ?, task_status = ?, error_code = ?, "
                    "error_msg = ?, finished_at = ?, last_seen = coalesce(?, last_seen) "
                    "where project = ? and task_id = ? and task_time = ?",
                    [
                        (
                            f.outcome,
                            f.task_status,
                            f.error_code,
                            f.error_msg,
                            f.finished_at,
                            f.last_seen,
                            project,
                            *f.key,
                        )
                        for f in poll.finished
                    ],
                )
            for sql, keys in (
                ("lookup_failures = lookup_failures + 1", poll.lookup_failed),
                ("lookup_failures = 0", poll.lookup_ok),
                (f"stuck_at = {float(poll.at)!r}", poll.stuck),
            ):
                if keys:
                    conn.executemany(
                        f"update tasks set {sql} where project = ? and task_id = ? and task_time = ?",
                        [(project, *key) for key in keys],
                    )
            if poll.events:
                conn.executemany(
                    "insert into events (at, project, kind, task_id, task_time, operate_type, server_name, "
                    "outcome, duration_s, error_code, error_msg) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            e.at,
                            project,
                            e.kind,
                            e.task_id,
                            e.task_time,
                            e.operate_type,
                            e.server_name,
                            e.outcome,
                            e.duration_s,
                            e.error_code,
                            e.error_msg,
                        )
                        for e in poll.events
                    ],
                )
            if poll.outbox:
                # The dedup key makes enqueueing idempotent.
                conn.executemany(
                    "insert or ignore into outbox (created_at, project, channel, kind, dedup_key, task_id, "
                    "task_time, after, payload, status, attempts, next_attempt_at) "
                    "values (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?)",
                    [
                        (
                            poll.at,
                            project,
                            e.channel,
                            e.kind,
                            e.dedup_key,
                            e.task_id,
                            e.task_time,
                            e.after,
                            json.dumps(e.payload, ensure_ascii=False),
                            poll.at,
                        )
                        for e in poll.outbox
                    ],
                )
            if poll.state is not None:
                values = poll.state._asdict()
                values.update(
                    auth_rejected=int(poll.state.auth_rejected), announced=int(poll.state.announced)
                )
                marks = ", ".join("?" * (len(values) + 1))
                conn.execute(
                    f"insert or replace into project_state (project, {_STATE_COLUMNS}) values ({marks})",
                    (project, *values.values()),
                )
        return poll_id or 0

    # -- outbox -----------------------------------------------------------------------------------

    @staticmethod
    def _entry(row: dict) -> OutboxEntry:
        return OutboxEntry(
            id=row["id"],
            project=row["project"],
            channel=row["channel"],
            kind=row["kind"],
            dedup_key=row["dedup_key"],
            task_id=row["task_id"],
            task_time=row["task_time"],
            after=row["after"],
            payload=json.loads(row["payload"] or "{}"),
            status=row["status"],
            attempts=row["attempts"],
            created_at=row["created_at"],
            next_attempt_at=row["next_attempt_at"],
            last_error=row["last_error"],
        )

    def due_outbox(self, now: float, limit: int = 1000) -> list[OutboxEntry]:
        """Pending entries that are due, oldest first. An entry waiting for another one still
        pending (a finish for its start message) and entries of a paused channel are left out, so
        they never hold back an entry that is ready."""
        rows = self._rows(
            "select o.* from outbox o "
            "left join outbox dep on dep.dedup_key = o.after "
            "left join channels c on c.channel = o.channel "
            "where o.status = 'pending' and coalesce(o.next_attempt_at, 0) <= ? "
            "and (dep.id is null or dep.status != 'pending') "
            "and (c.paused_until is null or c.paused_until <= ?) "
            "order by o.id limit ?",
            [now, now, limit],
        )
        return [self._entry(row) for row in rows]

    def outbox_entries(self, status: str | None = None) -> list[OutboxEntry]:
        """Every entry (or those of one status), oldest first: for tests and tools."""
        if status is None:
            rows = self._rows("select * from outbox order by id")
        else:
            rows = self._rows("select * from outbox where status = ? order by id", [status])
        return [self._entry(row) for row in rows]

    def start_channels(
        self, project: str, keys: Iterable[TaskKey], *, fixed: str | None = None
    ) -> dict[TaskKey, frozenset[str]]:
        """The channels each task has a start message in: an entry queued or sent, or a thread (its
        entry may be pruned while the task still runs); an entry of kpsbot 0.1 (no channel of its
        own) counts for `fixed`, the KPSBOT_CHANNEL."""
        wanted = set(keys)
        found: dict[TaskKey, set[str]] = {}
        ids = sorted({task_id for task_id, _ in wanted})
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            with self._lock:
                rows = self.conn.execute(
                    "select task_id, task_time, channel from outbox where project = ? and kind = 'started' "
                    f"and status != 'failed' and task_id in ({marks}) union select task_id, task_time, "
                    f"channel from threads where project = ? and task_id in ({marks})",
                    (project, *chunk, project, *chunk),
                ).fetchall()
            for task_id, task_time, channel in rows:
                key = (task_id, task_time or "")
                target = channel or fixed
                if key in wanted and target:
                    found.setdefault(key, set()).add(target)
        return {key: frozenset(channels) for key, channels in found.items()}

    def thread(self, project: str, task_id: str, task_time: str, channel: str) -> str | None:
        """The ts of the task's start message in `channel`, if one was posted."""
        return self._value(
            "select ts from threads where project = ? and task_id = ? and task_time = ? and channel = ?",
            [project, task_id, task_time, channel],
        )

    def mark_sent(
        self,
        entry: OutboxEntry,
        *,
        now: float,
        channel: str,
        ts: str | None,
        thread: bool = False,
    ) -> None:
        """Record a delivered entry; `thread`: it was the task's start message in that channel."""
        with self.transaction() as conn:
            conn.execute(
                "update outbox set status = 'sent', sent_at = ?, result_channel = ?, result_ts = ?, "
                "attempts = attempts + 1, last_error = null where id = ?",
                (now, channel, ts, entry.id),
            )
            if thread and ts and entry.task_id is not None:
                conn.execute(
                    "insert or replace into threads (project, task_id, task_time, channel, ts, posted_at) "
                    "values (?, ?, ?, ?, ?, ?)",
                    (entry.project or "", entry.task_id, entry.task_time or "", channel, ts, now),
                )
            conn.execute(
                "update channels set failing_error = null, failing_since = null where channel = ?", (channel,)
            )

    def mark_retry(self, entry_id: int, *, error: str, next_attempt_at: float) -> None:
        with self.transaction() as conn:
            conn.execute(
                "update outbox set attempts = attempts + 1, last_error = ?, next_attempt_at = ? where id = ?",
                (error, next_attempt_at, entry_id),
            )

    def mark_failed(self, entry_id: int, *, error: str, status: str = "failed") -> None:
        """`failed`: Slack refused it for good; `skipped`: nothing left to do (e.g. no message to edit)."""
        with self.transaction() as conn:
            conn.execute(
                "update outbox set status = ?, attempts = attempts + 1, last_error = ? where id = ?",
                (status, error, entry_id),
            )

    def pending_deliveries(self) -> int:
        return self._value("select count(*) from outbox where status = 'pending'")

    def failed_deliveries(self) -> int:
        return self._value("select count(*) from outbox where status = 'failed'")

    def oldest_pending(self) -> float | None:
        """When the oldest pending entry was queued (epoch seconds)."""
        return self._value("select min(created_at) from outbox where status = 'pending'")

    def last_delivery_error(self) -> str | None:
        return self._value("select last_error from outbox where status = 'failed' order by id desc limit 1")

    def outbox_status(self, dedup_key: str) -> str | None:
        return self._value("select status from outbox where dedup_key = ?", [dedup_key])

    # -- channels -------------------------------------------------------------------------------

    def pause_channel(self, channel: str, until: float) -> None:
        """Hold back every entry of `channel` until `until` (Slack's Retry-After for it)."""
        with self.transaction() as conn:
            conn.execute("insert or ignore into channels (channel) values (?)", (channel,))
            conn.execute("update channels set paused_until = ? where channel = ?", (until, channel))

    def channel_failing(self, channel: str, error: str, now: float) -> None:
        """Slack refused `channel` for good (not_in_channel, …): shown until a post there succeeds."""
        with self.transaction() as conn:
            conn.execute("insert or ignore into channels (channel) values (?)", (channel,))
            conn.execute(
                "update channels set failing_error = ?, failing_since = coalesce(failing_since, ?) "
                "where channel = ?",
                (error, now, channel),
            )

    def channel_states(self) -> dict[str, ChannelState]:
        rows = self._rows("select channel, paused_until, failing_error, failing_since from channels")
        return {row["channel"]: ChannelState(**row) for row in rows}

    def failing_channels(self) -> dict[str, str]:
        rows = self._rows("select channel, failing_error from channels where failing_error is not null")
        return {row["channel"]: row["failing_error"] for row in rows}

    # -- subscriptions ------------------------------------------------------------------------------

    def add_subscription(
        self,
        channel: str,
        *,
        projects: Sequence[str] = (),
        actions: Sequence[str] = (),
        failures_only: bool = False,
        text: str = "",
        created_by: str | None = None,
        now: float | None = None,
        active: bool = True,
    ) -> Subscription:
        """Store a subscription; an inactive one (`active=False`) is invisible until activated."""
        with self.transaction() as conn:
            cursor = conn.execute(
                "insert into subscriptions (channel, projects, actions, failures_only, text, created_by, "
                "created_at, active) values (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    channel,
                    json.dumps(list(projects)),
                    json.dumps(list(actions)),
                    int(failures_only),
                    text,
                    created_by,
                    time.time() if now is None else now,
                    int(active),
                ),
            )
            new_id = cursor.lastrowid or 0
        return self.subscriptions(ids=[new_id], inactive=True)[0]

    def activate_subscription(self, subscription_id: int) -> None:
        with self.transaction() as conn:
            conn.execute("update subscriptions set active = 1 where id = ?", (subscription_id,))

    def subscriptions(
        self, channel: str | None = None, *, ids: Sequence[int] | None = None, inactive: bool = False
    ) -> list[Subscription]:
        """The active subscriptions (of a channel, or with these ids), oldest first."""
        where: list[str] = [] if inactive else ["active = 1"]
        params: list[Any] = []
        if channel is not None:
            where.append("channel = ?")
            params.append(channel)
        if ids is not None:
            where.append(f"id in ({','.join('?' * len(ids)) or 'null'})")
            params.extend(ids)
        sql = (
            "select * from subscriptions"
            + (f" where {' and '.join(where)}" if where else "")
            + " order by id"
        )
        return [
            Subscription(
                id=row["id"],
                channel=row["channel"],
                projects=tuple(json.loads(row["projects"])),
                actions=tuple(json.loads(row["actions"])),
                failures_only=bool(row["failures_only"]),
                text=row["text"],
                created_by=row["created_by"],
                created_at=row["created_at"],
            )
            for row in self._rows(sql, params)
        ]

    def remove_subscriptions(self, ids: Sequence[int]) -> int:
        if not ids:
            return 0
        with self.transaction() as conn:
            return conn.execute(
                f"delete from subscriptions where id in ({','.join('?' * len(ids))})", tuple(ids)
            ).rowcount

    # -- polls and events (also what /healthz and the Home tab read) --------------------------------

    def last_poll(self, project: str | None = None, *, ok: bool | None = None) -> PollRecord | None:
        where: list[str] = []
        params: list[Any] = []
        if project is not None:
            where.append("project = ?")
            params.append(project)
        if ok is not None:
            where.append("ok = ?")
            params.append(int(ok))
        clause = f"where {' and '.join(where)}" if where else ""
        rows = self._rows(f"select * from polls {clause} order by id desc limit 1", params)
        if not rows:
            return None
        row = rows[0]
        return PollRecord(
            project=row["project"],
            at=utc(row["at"]) or datetime.now(timezone.utc),
            ok=bool(row["ok"]),
            error=row["error"],
            task_count=row["task_count"],
            skipped_rows=row["skipped_rows"] or 0,
            duration_ms=row["duration_ms"] or 0,
        )

    def last_successful_polls(self) -> dict[str, datetime]:
        rows = self._rows("select project, max(at) as at from polls where ok = 1 group by project")
        return {row["project"]: datetime.fromtimestamp(row["at"], tz=timezone.utc) for row in rows}

    def events(self, since: float = 0.0, *, project: str | None = None) -> list[dict]:
        if project is None:
            return self._rows("select * from events where at >= ? order by id", [since])
        return self._rows("select * from events where at >= ? and project = ? order by id", [since, project])

    def recent_finished(self, limit: int = 10) -> list[dict]:
        return self._rows("select * from events where kind = 'finished' order by id desc limit ?", [limit])

    # -- lease ----------------------------------------------------------------------------------

    def acquire_lease(
        self, owner: str, ttl: float, *, now: float | None = None, name: str = DEFAULT_LEASE
    ) -> int | None:
        """Take or renew the lease when it is free, expired or already ours; atomic across processes.

        Returns the lease's generation (it changes whenever the owner changes, so a process that
        lost the lease can tell), or None when another process holds it.
        """
        now = time.time() if now is None else now
        with self.transaction() as conn:
            row = conn.execute(
                "select owner, expires_at, generation from lease where name = ?", (name,)
            ).fetchone()
            if row is not None and row[0] != owner and row[1] > now:
                return None
            generation = (row[2] if row else 0) + (0 if row is not None and row[0] == owner else 1)
            conn.execute(
                "insert or replace into lease (name, owner, expires_at, generation) values (?, ?, ?, ?)",
                (name, owner, now + ttl, generation),
            )
            return generation

    def holds_lease(
        self,
        owner: str,
        generation: int,
        *,
        margin: float = 0.0,
        now: float | None = None,
        name: str = DEFAULT_LEASE,
    ) -> bool:
        """Whether `owner` still holds generation `generation` of the lease for `margin` more seconds."""
        now = time.time() if now is None else now
        row = self._rows("select owner, expires_at, generation from lease where name = ?", [name])
        return (
            bool(row)
            and (row[0]["owner"], row[0]["generation"]) == (owner, generation)
            and (row[0]["expires_at"] > now + margin)
        )

    def release_lease(self, owner: str, *, name: str = DEFAULT_LEASE) -> None:
        with self.transaction() as conn:
            # Expire rather than delete: the generation must keep counting.
            conn.execute("update lease set expires_at = 0 where name = ? and owner = ?", (name, owner))

    def lease_holder(self, *, now: float | None = None, name: str = DEFAULT_LEASE) -> str | None:
        now = time.time() if now is None else now
        return self._value("select owner from lease where name = ? and expires_at > ?", [name, now])

    # -- meta and retention -----------------------------------------------------------------------

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        value = self._value("select value from meta where key = ?", [key])
        return default if value is None else value

    def set_meta(self, key: str, value: str | None) -> None:
        with self.transaction() as conn:
            if value is None:
                conn.execute("delete from meta where key = ?", (key,))
            else:
                conn.execute("insert or replace into meta (key, value) values (?, ?)", (key, value))

    def prune(self, *, now: float, retention_days: int) -> dict[str, int]:
        """Delete finished tasks, events, polls and settled outbox entries older than the retention."""
        cutoff = now - retention_days * 86400
        with self.transaction() as conn:
            counts = {
                "tasks": conn.execute(
                    "delete from tasks where state = 'finished' and finished_at < ?", (cutoff,)
                ).rowcount,
                "threads": conn.execute(
                    "delete from threads where posted_at < ? and not exists (select 1 from tasks t where "
                    "t.project = threads.project and t.task_id = threads.task_id and "
                    "t.task_time = threads.task_time)",
                    (cutoff,),
                ).rowcount,
                "events": conn.execute("delete from events where at < ?", (cutoff,)).rowcount,
                "polls": conn.execute("delete from polls where at < ?", (cutoff,)).rowcount,
                # A notification still pending after the whole retention period is news nobody needs.
                "outbox": conn.execute("delete from outbox where created_at < ?", (cutoff,)).rowcount,
            }
        if any(counts.values()):
            log.info("pruned records older than %d days: %s", retention_days, counts)
        return counts


def _create_private(path: str) -> None:
    """Create the file owner-only before SQLite opens it; tighten an existing one."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        _chmod_private(path)
    else:
        os.close(fd)


def _chmod_private(path: str) -> None:
    try:
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, 0o600)
    except FileNotFoundError:
        pass
