"""The SQLite store: private file, migrations, one transaction owner, one-transaction poll writes,
outbox, lease, retention."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import replace

import pytest
from sqlite_utils import Database

from kpsbot import store as store_module
from kpsbot.kps.models import RunningTask
from kpsbot.store import (
    SCHEMA_VERSION,
    EventRow,
    FinishedRow,
    NewTask,
    OutboxItem,
    PollWrite,
    ProjectState,
    Store,
)

TASK = RunningTask("t1", "RUNNING_RESET", "1700000000000", "web", "srv", "kp")
KEY = ("t1", "1700000000000")
P = "p1"


def started_poll(at: float = 100.0) -> PollWrite:
    return PollWrite(
        project=P,
        at=at,
        ok=True,
        duration_ms=5,
        task_count=1,
        new_tasks=[NewTask(TASK, "message")],
        events=[EventRow(at, "started", *KEY, TASK.operate_type, TASK.server_name)],
        outbox=[
            OutboxItem("started", "started:t1", "C1", {"task": TASK.to_api()}, task_id="t1", task_time=KEY[1])
        ],
        state=ProjectState(baseline_at=1.0),
    )


def test_file_is_private_and_in_wal_mode(tmp_path):
    path = tmp_path / "k.db"
    with Store(path) as store:
        assert store.conn.execute("pragma journal_mode").fetchone()[0] == "wal"
        store.record_poll(started_poll())
    for name in os.listdir(tmp_path):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o600, name


def test_existing_readable_file_is_tightened(tmp_path):
    path = tmp_path / "k.db"
    path.touch(mode=0o644)
    os.chmod(path, 0o644)
    Store(path).close()
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_an_in_memory_store_works():
    """sqlite-utils 3.x commits inside `with conn:`; that once broke `Store(":memory:")`."""
    with Store(":memory:") as store:
        store.record_poll(started_poll())
        assert store.running_snapshot(P) == {"t1": KEY[1]}


def test_the_store_owns_its_transactions():
    """What sqlite-utils 3.x does around each write (`with conn:`) joins the store's transaction
    instead of committing it half-way: a failure after it rolls everything back."""
    with Store(":memory:") as store:
        with pytest.raises(RuntimeError), store.transaction() as conn:
            conn.execute("insert into meta (key, value) values ('a', '1')")
            with store.conn:
                conn.execute("insert into meta (key, value) values ('b', '2')")
            store.db.table("meta").insert({"key": "c", "value": "3"})
            raise RuntimeError("boom")
        assert store.conn.execute("select count(*) from meta").fetchone()[0] == 0
        with store.conn:  # outside a store transaction it is sqlite3's own context manager
            store.conn.execute("insert into meta (key, value) values ('d', '4')")
        assert store.get_meta("d") == "4"


def test_a_failed_migration_closes_the_connection(tmp_path, monkeypatch):
    closed = []
    original = store_module._Connection.close

    def close(self):
        closed.append(True)
        original(self)

    monkeypatch.setattr(store_module._Connection, "close", close)
    monkeypatch.setattr(store_module.Store, "migrate", lambda self: (_ for _ in ()).throw(RuntimeError("no")))
    with pytest.raises(RuntimeError):
        Store(tmp_path / "k.db")
    assert closed == [True]


def test_migrates_a_version_1_database_keeping_its_data(tmp_path):
    path = tmp_path / "old.db"
    db = Database(sqlite3.connect(path, isolation_level=None))
    db["schema_version"].create({"version": int, "migrated_at": float})
    store_module.MIGRATIONS[0](db)
    db["schema_version"].insert({"version": 1, "migrated_at": 0.0})
    db["tasks"].insert({**TASK.to_api(), "first_seen": 1.0, "state": "running", "start_kind": "message"})
    db["polls"].insert({"at": 1.0, "ok": 1, "task_count": 1, "duration_ms": 3})
    db.close()
    with Store(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert store.adopt_legacy(P)
        assert store.running_snapshot(P) == {"t1": KEY[1]} and store.task(P, *KEY).lookup_failures == 0
        assert store.last_poll(P).skipped_rows == 0
        assert store.acquire_lease("me", 10)


def test_a_schema_3_database_of_before_the_fast_path_gets_its_columns(tmp_path):
    # Development builds of 0.2 wrote schema 3 without project_state's fast-path columns.
    path = tmp_path / "dev.db"
    with Store(path) as store:
        store.record_poll(started_poll())
    db = Database(sqlite3.connect(path, isolation_level=None))
    db.execute("delete from schema_version where version > 3")
    db["project_state"].transform(drop=set(store_module.FAST_PATH_COLUMNS))
    db.close()
    with Store(path) as store:
        assert store.schema_version == SCHEMA_VERSION == 4
        assert store.project_state(P).baseline_at == 1.0 and store.running_snapshot(P) == {"t1": KEY[1]}
        state = store.project_state(P)._replace(snapshot_digest=7, snapshot_count=1, listing_fingerprint=9)
        store.record_poll(PollWrite(project=P, at=200.0, ok=True, state=state))
        assert store.project_state(P).listing_fingerprint == 9


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "new.db"
    Store(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("insert into schema_version values (99, 0)")
    with pytest.raises(RuntimeError, match="upgrade kpsbot"):
        Store(path)


def test_poll_write_is_atomic_and_enqueueing_idempotent(tmp_path):
    with Store(tmp_path / "k.db") as store:
        store.record_poll(started_poll())
        bad = started_poll(200.0)
        bad.finished = [FinishedRow(KEY, "succeeded", 200.0)]
        bad.new_tasks = [NewTask(replace(TASK, task_id=None), "message")]  # type: ignore[arg-type]
        with pytest.raises(sqlite3.IntegrityError):
            store.record_poll(bad)
        assert store.last_poll(P).at.timestamp() == 100.0  # the failed write left no poll row
        assert store.running_snapshot(P) == {"t1": KEY[1]}  # nor a finished task
        store.record_poll(started_poll(300.0))
        assert len(store.outbox_entries()) == 1 and len(store.events()) == 2


def test_tasks_are_told_apart_by_task_time_and_project(tmp_path):
    again = replace(TASK, task_time="1700000999000")
    with Store(tmp_path / "k.db") as store:
        store.record_poll(started_poll())
        store.record_poll(
            PollWrite(
                project=P,
                at=200.0,
                ok=True,
                finished=[FinishedRow(KEY, "unknown", 200.0)],
                new_tasks=[NewTask(again, "message")],
            )
        )
        store.record_poll(PollWrite(project="p2", at=200.0, ok=True, new_tasks=[NewTask(TASK, "message")]))
        assert store.running_snapshot(P) == {"t1": "1700000999000"}
        assert store.running_snapshot("p2") == {"t1": KEY[1]}
        assert store.task(P, *KEY).state == "finished"


def test_outbox_lifecycle_and_threads(tmp_path):
    with Store(tmp_path / "k.db") as store:
        store.record_poll(started_poll())
        [entry] = store.due_outbox(now=100.0)
        store.mark_retry(entry.id, error="HTTP 500", next_attempt_at=160.0)
        assert store.due_outbox(now=150.0) == [] and store.pending_deliveries() == 1
        [entry] = store.due_outbox(now=160.0)
        assert entry.attempts == 1 and entry.last_error == "HTTP 500"
        store.mark_sent(entry, now=161.0, channel="C1", ts="1.2", thread=True)
        assert store.thread(P, *KEY, "C1") == "1.2" and store.thread(P, *KEY, "C2") is None
        assert store.pending_deliveries() == 0
        assert store.outbox_status("started:t1") == "sent" and store.failed_deliveries() == 0


def test_a_waiting_entry_never_holds_back_a_ready_one(tmp_path):
    """Head-of-line blocking: entries waiting for their start message must not fill the batch."""
    with Store(tmp_path / "k.db") as store:
        start = OutboxItem("started", "started:x", "C1", {}, task_id="x", task_time="1")
        waiting = [
            OutboxItem("finished", f"finished:{i}", "C1", {}, task_id="x", task_time="1", after="started:x")
            for i in range(150)
        ]
        outage = OutboxItem("outage", "outage:1", "C1", {})
        store.record_poll(PollWrite(project=P, at=1.0, ok=True, outbox=[start, *waiting, outage]))
        start_id = store.due_outbox(now=1.0, limit=1)[0].id
        store.mark_retry(start_id, error="HTTP 500", next_attempt_at=100.0)  # the start backs off
        due = store.due_outbox(now=2.0, limit=100)
        assert [e.kind for e in due] == ["outage"]
        store.pause_channel("C1", until=50.0)
        assert store.due_outbox(now=10.0) == []
        assert [e.kind for e in store.due_outbox(now=60.0)] == ["outage"]


def test_lease_is_exclusive_until_released_or_expired_and_fenced(tmp_path):
    path = tmp_path / "k.db"
    with Store(path) as a, Store(path) as b:
        first = a.acquire_lease("a", 30, now=0)
        assert first is not None and a.holds_lease("a", first, now=1)
        assert b.acquire_lease("b", 30, now=10) is None
        assert a.acquire_lease("a", 30, now=20) == first  # a renewal keeps the generation
        assert b.acquire_lease("b", 30, now=49) is None
        second = b.acquire_lease("b", 30, now=51)  # a stopped renewing
        assert second is not None and second != first
        assert not a.holds_lease("a", first, now=52) and b.holds_lease("b", second, now=52)
        assert not b.holds_lease("b", second, margin=40, now=52)  # too little lease left to send
        b.release_lease("b")
        assert a.lease_holder(now=52) is None
        third = a.acquire_lease("a", 30, now=52)
        assert third not in (None, first, second)


def test_subscriptions_are_stored_listed_and_removed(tmp_path):
    with Store(tmp_path / "k.db") as store:
        one = store.add_subscription("C1", projects=["cn-north-4"], actions=["RESET"], created_by="U1", now=5)
        two = store.add_subscription("C1", failures_only=True, text="db-")
        store.add_subscription("C2")
        assert [s.id for s in store.subscriptions("C1")] == [one.id, two.id]
        assert (one.projects, one.actions, one.failures_only, one.created_by) == (
            ("cn-north-4",),
            ("RESET",),
            False,
            "U1",
        )
        assert two.failures_only and two.text == "db-"
        assert store.remove_subscriptions([one.id]) == 1
        assert [s.id for s in store.subscriptions()] == [two.id, two.id + 1]
        # One waiting for its confirmation in the channel is invisible (no poll routes to it) until then.
        waiting = store.add_subscription("C3", active=False)
        assert store.subscriptions("C3") == [] and waiting.id not in [s.id for s in store.subscriptions()]
        store.activate_subscription(waiting.id)
        assert [s.id for s in store.subscriptions("C3")] == [waiting.id]


def test_prune_keeps_running_tasks_and_recent_rows(tmp_path):
    day = 86400
    with Store(tmp_path / "k.db") as store:
        store.record_poll(started_poll(at=0.0))
        store.record_poll(
            PollWrite(project=P, at=10.0, ok=True, finished=[FinishedRow(KEY, "succeeded", 10.0)])
        )
        t2 = replace(TASK, task_id="t2")
        store.record_poll(PollWrite(project=P, at=40 * day, ok=True, new_tasks=[NewTask(t2, "message")]))
        counts = store.prune(now=40 * day, retention_days=30)
        assert counts == {"tasks": 1, "threads": 0, "events": 1, "polls": 2, "outbox": 1}
        assert store.running_snapshot(P) == {"t2": KEY[1]} and store.last_poll(P) is not None
