"""The SQLite store: private file, migrations, one-transaction poll writes, outbox, lease, retention."""

from __future__ import annotations

import os
import sqlite3

import pytest
from sqlite_utils import Database

from kpsbot import store as store_module
from kpsbot.store import SCHEMA_VERSION, PollWrite, Store

TASK = {
    "task_id": "t1",
    "operate_type": "RUNNING_RESET",
    "task_time": "1700000000000",
    "server_name": "web",
    "server_id": "srv",
    "keypair_name": "kp",
    "start_kind": "message",
}


def started_poll(at: float = 100.0) -> PollWrite:
    return PollWrite(
        at=at,
        ok=True,
        duration_ms=5,
        task_count=1,
        new_tasks=[TASK],
        events=[{"at": at, "kind": "started", "task_id": "t1"}],
        outbox=[{"kind": "started", "dedup_key": "started:t1", "task_id": "t1", "payload": {"task": TASK}}],
        meta={"baseline_at": "1"},
    )


def test_file_is_private_and_in_wal_mode(tmp_path):
    path = tmp_path / "k.db"
    with Store(path) as store:
        assert store.db.execute("pragma journal_mode").fetchone()[0] == "wal"
        store.record_poll(started_poll())
    for name in os.listdir(tmp_path):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o600, name


def test_existing_readable_file_is_tightened(tmp_path):
    path = tmp_path / "k.db"
    path.touch(mode=0o644)
    os.chmod(path, 0o644)
    Store(path).close()
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_migrates_a_version_1_database_keeping_its_data(tmp_path):
    path = tmp_path / "old.db"
    db = Database(sqlite3.connect(path, isolation_level=None))
    db["schema_version"].create({"version": int, "migrated_at": float})
    store_module.MIGRATIONS[0](db)
    db["schema_version"].insert({"version": 1, "migrated_at": 0.0})
    db["tasks"].insert({**{k: v for k, v in TASK.items()}, "first_seen": 1.0, "state": "running"})
    db["polls"].insert({"at": 1.0, "ok": 1, "task_count": 1, "duration_ms": 3})
    db.close()
    with Store(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert store.running_task_ids() == {"t1"} and store.task("t1").lookup_failures == 0
        assert store.last_poll().skipped_rows == 0
        assert store.acquire_lease("me", 10)


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
        bad.events = [{"at": 1, "kind": "started", "no_such_column": 1}]
        with pytest.raises(sqlite3.OperationalError):
            store.record_poll(bad)
        assert store.last_poll().at.timestamp() == 100.0  # the failed write left no poll row
        store.record_poll(started_poll(300.0))
        assert len(store.outbox()) == 1 and len(store.events()) == 2


def test_outbox_lifecycle(tmp_path):
    with Store(tmp_path / "k.db") as store:
        store.record_poll(started_poll())
        [entry] = store.due_outbox(now=100.0)
        store.mark_retry(entry.id, error="HTTP 500", next_attempt_at=160.0)
        assert store.due_outbox(now=150.0) == [] and store.pending_deliveries() == 1
        [entry] = store.due_outbox(now=160.0)
        assert entry.attempts == 1 and entry.last_error == "HTTP 500"
        store.mark_sent(entry.id, now=161.0, channel="C1", ts="1.2", start_of="t1")
        assert store.task("t1").start_ts == "1.2" and store.pending_deliveries() == 0
        assert store.outbox_status("started:t1") == "sent" and store.failed_deliveries() == 0


def test_lease_is_exclusive_until_released_or_expired(tmp_path):
    path = tmp_path / "k.db"
    with Store(path) as a, Store(path) as b:
        assert a.acquire_lease("a", 30, now=0)
        assert not b.acquire_lease("b", 30, now=10)
        assert a.acquire_lease("a", 30, now=20)  # renewal
        assert not b.acquire_lease("b", 30, now=49)
        assert b.acquire_lease("b", 30, now=51)  # a stopped renewing
        b.release_lease("b")
        assert a.lease_holder(now=52) is None and a.acquire_lease("a", 30, now=52)


def test_prune_keeps_running_tasks_and_recent_rows(tmp_path):
    day = 86400
    with Store(tmp_path / "k.db") as store:
        store.record_poll(started_poll(at=0.0))
        store.record_poll(
            PollWrite(
                at=10.0,
                ok=True,
                duration_ms=1,
                finished=[{"task_id": "t1", "outcome": "succeeded", "finished_at": 10.0}],
            )
        )
        store.record_poll(
            PollWrite(at=40 * day, ok=True, duration_ms=1, new_tasks=[{**TASK, "task_id": "t2"}])
        )
        counts = store.prune(now=40 * day, retention_days=30)
        assert counts == {"tasks": 1, "events": 1, "polls": 2, "outbox": 1}
        assert store.running_task_ids() == {"t2"} and store.last_poll() is not None
