"""SQLite store for the watcher: snapshot, events, outbox, polls, outage state and lease (the only SQL)."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlite_utils import Database

log = logging.getLogger(__name__)

TASK_COLUMNS = ("task_id", "operate_type", "task_time", "server_name", "server_id", "keypair_name")
DEFAULT_LEASE = "watcher"
_CHUNK = 500  # ids per `IN (...)` query, well below SQLite's variable limit


# -- schema and migrations -----------------------------------------------------------
#
# Each migration moves the schema up by one version and runs inside the same
# BEGIN IMMEDIATE transaction as the version bump, so two processes starting on one
# file never migrate twice.


def _v1(db: Database) -> None:
    db["tasks"].create(
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
    db["tasks"].create_index(["state"])
    db["events"].create(
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
    db["events"].create_index(["at"])
    db["outbox"].create(
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
    db["outbox"].create_index(["dedup_key"], unique=True)
    db["outbox"].create_index(["status", "next_attempt_at"])
    db["polls"].create(
        {"id": int, "at": float, "ok": int, "error": str, "task_count": int, "duration_ms": int},
        pk="id",
    )
    db["polls"].create_index(["at"])
    db["meta"].create({"key": str, "value": str}, pk="key")


def _v2(db: Database) -> None:
    # Unparseable rows are counted per poll; transient status-lookup failures are counted per
    # task; the lease lets two `kpsbot run` processes share one database.
    db["polls"].add_column("skipped_rows", int, not_null_default=0)
    db["tasks"].add_column("lookup_failures", int, not_null_default=0)
    db["lease"].create({"name": str, "owner": str, "expires_at": float}, pk="name")


MIGRATIONS: tuple[Callable[[Database], None], ...] = (_v1, _v2)
SCHEMA_VERSION = len(MIGRATIONS)


# -- records ---------------------------------------------------------------------------


def _utc(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=timezone.utc)


@dataclass(frozen=True)
class StoredTask:
    task_id: str
    operate_type: str
    task_time: str
    server_name: str
    server_id: str
    keypair_name: str
    first_seen: float
    last_seen: float | None
    state: str
    start_kind: str | None
    start_channel: str | None
    start_ts: str | None
    lookup_failures: int = 0

    def to_api(self) -> dict[str, str]:
        return {name: getattr(self, name) or "" for name in TASK_COLUMNS}


@dataclass(frozen=True)
class OutboxEntry:
    id: int
    kind: str
    dedup_key: str
    task_id: str | None
    payload: dict
    status: str
    attempts: int
    created_at: float
    next_attempt_at: float | None
    last_error: str | None
    result_ts: str | None = None


@dataclass(frozen=True)
class PollRecord:
    at: datetime
    ok: bool
    error: str | None
    task_count: int | None
    skipped_rows: int
    duration_ms: int


@dataclass
class PollWrite:
    """Everything one poll changes, written in a single transaction."""

    at: float
    ok: bool
    duration_ms: int
    error: str | None = None
    task_count: int | None = None
    skipped_rows: int = 0
    new_tasks: list[dict] = field(default_factory=list)  # TASK_COLUMNS + start_kind
    finished: list[dict] = field(default_factory=list)  # task_id, outcome, task_status, error_*, finished_at
    lookup_failed: list[str] = field(default_factory=list)  # still candidates; counter + 1
    lookup_ok: list[str] = field(default_factory=list)  # found still running; counter back to 0
    events: list[dict] = field(default_factory=list)
    outbox: list[dict] = field(default_factory=list)  # kind, dedup_key, task_id, payload (dict)
    meta: dict[str, str | None] = field(default_factory=dict)  # None deletes the key


def _chunks(items: list, size: int = _CHUNK) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Store:
    """One SQLite file; safe to share between threads (one connection behind a lock)."""

    def __init__(self, path: str | os.PathLike, *, timeout: float = 10.0) -> None:
        self.path = os.fspath(path)
        if self.path != ":memory:":
            _create_private(self.path)
        self.conn = sqlite3.connect(self.path, timeout=timeout, check_same_thread=False, isolation_level=None)
        self._db: Database | None = None
        self._lock = threading.RLock()
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
        self.migrate()
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
    def _write(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front, so read-then-write is atomic."""
        with self._lock:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[dict]:
        """A SELECT's rows as dicts (what sqlite-utils' `db.query` gives, without importing it)."""
        with self._lock:
            cursor = self.conn.execute(sql, tuple(params))
            keys = [column[0] for column in cursor.description]
            return [dict(zip(keys, row)) for row in cursor]

    # -- schema ------------------------------------------------------------------------

    def _has_table(self, name: str) -> bool:
        query = "select 1 from sqlite_master where type = 'table' and name = ?"
        with self._lock:
            return self.conn.execute(query, (name,)).fetchone() is not None

    @property
    def schema_version(self) -> int:
        with self._lock:
            if not self._has_table("schema_version"):
                return 0
            row = self.conn.execute("select max(version) from schema_version").fetchone()
            return row[0] or 0

    def migrate(self, target: int = SCHEMA_VERSION) -> None:
        with self._write():
            if not self._has_table("schema_version"):
                self.db["schema_version"].create({"version": int, "migrated_at": float})
            current = self.schema_version
            if current > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path} has schema version {current}, newer than this kpsbot "
                    f"understands ({SCHEMA_VERSION}): upgrade kpsbot"
                )
            for version in range(current + 1, target + 1):
                MIGRATIONS[version - 1](self.db)
                self.db["schema_version"].insert({"version": version, "migrated_at": time.time()})
                # a new file is simply created; only upgrades of an existing one are news
                log.log(
                    logging.INFO if current else logging.DEBUG,
                    "migrated %s to schema version %d",
                    self.path,
                    version,
                )

    # -- snapshot ----------------------------------------------------------------------

    def running_task_ids(self) -> set[str]:
        with self._lock:
            cursor = self.conn.execute("select task_id from tasks where state = 'running'")
            return {row[0] for row in cursor}

    def tasks(self, task_ids: Iterable[str]) -> dict[str, StoredTask]:
        found: dict[str, StoredTask] = {}
        columns = ", ".join(f.name for f in StoredTask.__dataclass_fields__.values())
        for chunk in _chunks(list(task_ids)):
            marks = ",".join("?" * len(chunk))
            for row in self._rows(f"select {columns} from tasks where task_id in ({marks})", chunk):
                found[row["task_id"]] = StoredTask(**row)
        return found

    def task(self, task_id: str) -> StoredTask | None:
        return self.tasks([task_id]).get(task_id)

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        rows = self._rows("select value from meta where key = ?", [key])
        return rows[0]["value"] if rows else default

    def meta(self) -> dict[str, str]:
        return {row["key"]: row["value"] for row in self._rows("select key, value from meta")}

    def set_meta(self, values: dict[str, str | None]) -> None:
        """Set (or, for None, delete) meta keys."""
        with self._write() as conn:
            _write_meta(conn, values)

    def record_poll(self, poll: PollWrite) -> int:
        """Write a poll with its snapshot changes, events and outbox entries in one transaction."""
        with self._write() as conn:
            poll_id = conn.execute(
                "insert into polls (at, ok, error, task_count, skipped_rows, duration_ms) "
                "values (?, ?, ?, ?, ?, ?)",
                (poll.at, int(poll.ok), poll.error, poll.task_count, poll.skipped_rows, poll.duration_ms),
            ).lastrowid
            if poll.new_tasks:
                conn.executemany(
                    "insert or replace into tasks (task_id, operate_type, task_time, server_name, "
                    "server_id, keypair_name, first_seen, last_seen, state, start_kind, lookup_failures) "
                    "values (?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, 0)",
                    [
                        (*(t[c] for c in TASK_COLUMNS), poll.at, poll.at, t.get("start_kind"))
                        for t in poll.new_tasks
                    ],
                )
            if poll.finished:
                conn.executemany(
                    "update tasks set state = 'finished', outcome = ?, task_status = ?, error_code = ?, "
                    "error_msg = ?, finished_at = ?, last_seen = coalesce(?, last_seen) where task_id = ?",
                    [
                        (
                            f["outcome"],
                            f.get("task_status"),
                            f.get("error_code"),
                            f.get("error_msg"),
                            f["finished_at"],
                            f.get("last_seen"),
                            f["task_id"],
                        )
                        for f in poll.finished
                    ],
                )
            if poll.lookup_failed:
                conn.executemany(
                    "update tasks set lookup_failures = lookup_failures + 1 where task_id = ?",
                    [(task_id,) for task_id in poll.lookup_failed],
                )
            if poll.lookup_ok:
                conn.executemany(
                    "update tasks set lookup_failures = 0 where task_id = ?",
                    [(task_id,) for task_id in poll.lookup_ok],
                )
            if poll.events:
                self.db["events"].insert_all(poll.events, batch_size=500)
            if poll.outbox:
                self.db["outbox"].insert_all(
                    (
                        {
                            "created_at": poll.at,
                            "kind": e["kind"],
                            "dedup_key": e["dedup_key"],
                            "task_id": e.get("task_id"),
                            "payload": json.dumps(e["payload"]),
                            "status": "pending",
                            "attempts": 0,
                            "next_attempt_at": poll.at,
                        }
                        for e in poll.outbox
                    ),
                    ignore=True,  # the dedup key makes enqueueing idempotent
                    batch_size=200,
                )
            _write_meta(conn, poll.meta)
        return poll_id

    # -- outbox ------------------------------------------------------------------------

    def _entry(self, row: dict) -> OutboxEntry:
        return OutboxEntry(
            id=row["id"],
            kind=row["kind"],
            dedup_key=row["dedup_key"],
            task_id=row["task_id"],
            payload=json.loads(row["payload"] or "{}"),
            status=row["status"],
            attempts=row["attempts"],
            created_at=row["created_at"],
            next_attempt_at=row["next_attempt_at"],
            last_error=row["last_error"],
            result_ts=row["result_ts"],
        )

    def due_outbox(self, now: float, limit: int = 1000) -> list[OutboxEntry]:
        rows = self._rows(
            "select * from outbox where status = 'pending' and coalesce(next_attempt_at, 0) <= ? "
            "order by id limit ?",
            [now, limit],
        )
        return [self._entry(row) for row in rows]

    def outbox(self, status: str | None = None) -> list[OutboxEntry]:
        if status is None:
            rows = self._rows("select * from outbox order by id")
        else:
            rows = self._rows("select * from outbox where status = ? order by id", [status])
        return [self._entry(row) for row in rows]

    def outbox_status(self, dedup_key: str) -> str | None:
        rows = self._rows("select status from outbox where dedup_key = ?", [dedup_key])
        return rows[0]["status"] if rows else None

    def mark_sent(
        self, entry_id: int, *, now: float, channel: str | None, ts: str | None, start_of: str | None = None
    ) -> None:
        """Record a delivered entry; `start_of` names the task whose start message this was."""
        with self._write() as conn:
            conn.execute(
                "update outbox set status = 'sent', sent_at = ?, result_channel = ?, result_ts = ?, "
                "attempts = attempts + 1, last_error = null where id = ?",
                (now, channel, ts, entry_id),
            )
            if start_of is not None:
                conn.execute(
                    "update tasks set start_channel = ?, start_ts = ? where task_id = ?",
                    (channel, ts, start_of),
                )

    def mark_retry(self, entry_id: int, *, error: str, next_attempt_at: float) -> None:
        with self._write() as conn:
            conn.execute(
                "update outbox set attempts = attempts + 1, last_error = ?, next_attempt_at = ? where id = ?",
                (error, next_attempt_at, entry_id),
            )

    def mark_failed(self, entry_id: int, *, error: str, status: str = "failed") -> None:
        """`failed`: Slack refused it for good; `skipped`: nothing left to do (e.g. no message to edit)."""
        with self._write() as conn:
            conn.execute(
                "update outbox set status = ?, attempts = attempts + 1, last_error = ? where id = ?",
                (status, error, entry_id),
            )

    def pending_deliveries(self) -> int:
        return self._rows("select count(*) as n from outbox where status = 'pending'")[0]["n"]

    def failed_deliveries(self) -> int:
        return self._rows("select count(*) as n from outbox where status = 'failed'")[0]["n"]

    def last_delivery_error(self) -> str | None:
        rows = self._rows("select last_error from outbox where status = 'failed' order by id desc limit 1")
        return rows[0]["last_error"] if rows else None

    # -- polls (also what /healthz reads) --------------------------------------------------

    def last_poll(self, *, ok: bool | None = None) -> PollRecord | None:
        where = "" if ok is None else f"where ok = {int(ok)}"
        rows = self._rows(f"select * from polls {where} order by id desc limit 1")
        if not rows:
            return None
        row = rows[0]
        return PollRecord(
            at=_utc(row["at"]),
            ok=bool(row["ok"]),
            error=row["error"],
            task_count=row["task_count"],
            skipped_rows=row["skipped_rows"] or 0,
            duration_ms=row["duration_ms"] or 0,
        )

    def last_successful_poll(self) -> datetime | None:
        poll = self.last_poll(ok=True)
        return poll.at if poll else None

    def events(self, since: float = 0.0) -> list[dict]:
        return self._rows("select * from events where at >= ? order by id", [since])

    # -- lease -------------------------------------------------------------------------

    def acquire_lease(
        self, owner: str, ttl: float, *, now: float | None = None, name: str = DEFAULT_LEASE
    ) -> bool:
        """Take or renew the lease when it is free, expired or already ours; atomic across processes."""
        now = time.time() if now is None else now
        with self._write() as conn:
            row = conn.execute("select owner, expires_at from lease where name = ?", (name,)).fetchone()
            if row is not None and row[0] != owner and row[1] > now:
                return False
            conn.execute(
                "insert or replace into lease (name, owner, expires_at) values (?, ?, ?)",
                (name, owner, now + ttl),
            )
            return True

    def release_lease(self, owner: str, *, name: str = DEFAULT_LEASE) -> None:
        with self._write() as conn:
            conn.execute("delete from lease where name = ? and owner = ?", (name, owner))

    def lease_holder(self, *, now: float | None = None, name: str = DEFAULT_LEASE) -> str | None:
        now = time.time() if now is None else now
        rows = self._rows("select owner from lease where name = ? and expires_at > ?", [name, now])
        return rows[0]["owner"] if rows else None

    # -- retention ---------------------------------------------------------------------

    def prune(self, *, now: float, retention_days: int) -> dict[str, int]:
        """Delete finished tasks, events, polls and settled outbox entries older than the retention."""
        cutoff = now - retention_days * 86400
        with self._write() as conn:
            counts = {
                "tasks": conn.execute(
                    "delete from tasks where state = 'finished' and finished_at < ?", (cutoff,)
                ).rowcount,
                "events": conn.execute("delete from events where at < ?", (cutoff,)).rowcount,
                "polls": conn.execute("delete from polls where at < ?", (cutoff,)).rowcount,
                # A notification still pending after the whole retention period is news nobody needs.
                "outbox": conn.execute("delete from outbox where created_at < ?", (cutoff,)).rowcount,
            }
        if any(counts.values()):
            log.info("pruned records older than %d days: %s", retention_days, counts)
        return counts


def _write_meta(conn: sqlite3.Connection, values: dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            conn.execute("delete from meta where key = ?", (key,))
        else:
            conn.execute("insert or replace into meta (key, value) values (?, ?)", (key, value))


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
