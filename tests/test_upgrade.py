"""Upgrading from kpsbot 0.1.0 keeps the database (SPEC §5): a file 0.1.0 really wrote, migrated in place
by `kpsbot watch --once` (a real process) against the simulator and the fake Slack.

What the file holds (tests/data/make_kpsbot_010_db.py made it): project 0a1b2c3d4e5f60718293a4b5c6d7e8f9
watched into channel C0OLDCHAN; task-baseline-1 running since the baseline; task-a finished (its start
message 1700000000.000200 replied to and edited); task-b finished failed, its finish and the edit of its
start message 1700000000.000300 still pending (Slack answered 500); task-c running (start message
1700000000.000400); task-d running, its start message pending; a lease held by another host that
expired long ago.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from support.fake_slack import FakeSlack
from support.run_process import run_kpsbot

from kpsbot.simulator import Simulator, SimulatorServer
from kpsbot.store import Store

DB_010 = Path(__file__).parent / "data" / "kpsbot-0.1.0.db"
PROJECT = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
CHANNEL = "C0OLDCHAN"
AK, SK, BOT_TOKEN = "AKUPGRADE0001", "sk-upgrade-secret-0001", "xoxb-upgrade"
# The messages kpsbot 0.1.0 posted, by the ts Slack gave them.
TS_BASELINE, TS_A, TS_B, TS_C, TS_A_FINISHED = (
    "1700000000.000100",
    "1700000000.000200",
    "1700000000.000300",
    "1700000000.000400",
    "1700000000.000500",
)
OLD_MESSAGES = 5


def rows(path: Path, sql: str, params: tuple = ()) -> list[dict]:
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute(sql, params)]


def versions(db) -> list[int]:
    return [r["version"] for r in rows(db, "select version from schema_version order by rowid")]


@pytest.fixture
def db(tmp_path) -> Path:
    """A copy of the 0.1.0 file (with the 0.1 schema: never opened by this kpsbot before)."""
    path = tmp_path / "kpsbot.db"
    shutil.copyfile(DB_010, path)
    path.chmod(0o600)
    assert rows(path, "select max(version) as v from schema_version") == [{"v": 2}]
    return path


@pytest.fixture
def stored(db) -> dict[str, dict]:
    """Every task as 0.1.0 stored it, read before this kpsbot opens the file."""
    found = rows(
        db,
        "select task_id, operate_type, task_time, server_name, server_id, keypair_name, state from tasks "
        "order by task_id",
    )
    return {t["task_id"]: t for t in found}


@pytest.fixture
def running(stored) -> dict[str, dict]:
    """The tasks 0.1.0 last saw running (task_id and task_time as stored)."""
    found = {task_id: t for task_id, t in stored.items() if t["state"] == "running"}
    assert list(found) == ["task-baseline-1", "task-c", "task-d"]
    return found


@pytest.fixture
def kps(running):
    """KPS holding exactly those tasks."""
    sim = Simulator(project_id=PROJECT, ak=AK, sk=SK, rate=0.0)
    for task in running.values():
        sim.add_task(
            operate_type=task["operate_type"],
            server_name=task["server_name"],
            keypair_name=task["keypair_name"],
            task_id=task["task_id"],
            task_time_ms=int(task["task_time"]),
            server_id=task["server_id"],
        )
    with SimulatorServer(sim) as server:
        sim.url = server.url
        yield sim


@pytest.fixture
def slack():
    """The fake Slack, knowing the messages 0.1.0 posted (so they can be replied to and edited)."""
    with FakeSlack(bot_token=BOT_TOKEN) as fake:
        for ts, text, thread in [
            (TS_BASELINE, "Watching project 0a1b… in cn-north-4: 1 task already running", None),
            (TS_A, "Reset started on web-a", None),
            (TS_B, "Replace started on db-b", None),
            (TS_C, "Unbind started on api-c", None),
            (TS_A_FINISHED, "Reset succeeded", TS_A),
        ]:
            answer = requests.post(
                f"{fake.url}chat.postMessage",
                json={"channel": CHANNEL, "text": text, **({"thread_ts": thread} if thread else {})},
                headers={"Authorization": f"Bearer {BOT_TOKEN}"},
                timeout=5,
            ).json()
            assert answer["ts"] == ts
        yield fake


def environment(kps: Simulator, slack: FakeSlack, db: Path, **extra: str) -> dict:
    """The settings of kpsbot 0.1 (one project by ID, one channel), unchanged by the upgrade."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KPS", "SLACK", "CLOUD_SDK", "PORT"))}
    env.update(
        KPS_ENDPOINT=kps.url,
        KPS_PROJECT_ID=PROJECT,
        CLOUD_SDK_AK=AK,
        CLOUD_SDK_SK=SK,
        SLACK_BOT_TOKEN=BOT_TOKEN,
        SLACK_API_URL=slack.url,
        KPSBOT_CHANNEL=CHANNEL,
        KPSBOT_DB=str(db),
        KPSBOT_PACE_SECONDS="0",
        KPSBOT_STUCK_MINUTES="0",  # stuck alerts are news of 0.2, not of the upgrade (tested on their own)
        # The file was written with a clock of November 2025; a real upgrade opens a file minutes old.
        # Retention covering the file's age stands for that (the default drops year-old news: tested
        # on its own).
        KPSBOT_RETENTION_DAYS="3650",
    )
    env.update(extra)
    return env


def watch_once(env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return run_kpsbot(["watch", "--once"], cwd, env)


def start_watch_once(env: dict, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "kpsbot", "watch", "--once"],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def entry(kind: str, dedup_key: str, task_time: str, after: str | None, status: str = "sent") -> dict:
    return {"kind": kind, "dedup_key": dedup_key, "task_time": task_time, "after": after, "status": status}


def new_posts(slack: FakeSlack) -> list[dict]:
    """chat.postMessage calls since kpsbot 0.1's own."""
    return [c["args"] for c in slack.calls_to("chat.postMessage")][OLD_MESSAGES:]


def updates(slack: FakeSlack) -> list[dict]:
    return [c["args"] for c in slack.calls_to("chat.update")]


def test_watch_carries_on_from_the_010_database(kps, slack, db, tmp_path):
    env = environment(kps, slack, db)
    first = watch_once(env, tmp_path)
    assert first.returncode == 0, first.stderr
    assert "is watching" not in first.stderr  # the old lease expired long ago: it does not block
    # The snapshot is kept: no baseline, no start for a task 0.1 already knew; the three entries
    # 0.1 left pending are delivered.
    assert first.stdout.startswith(
        "3 tasks running, 0 started, 0 finished; 3 delivered, 0 pending, 0 failed deliveries"
    ), first.stdout
    posts = new_posts(slack)
    assert not [p for p in posts if "Watching project" in p["text"]]
    [d_start] = [p for p in posts if not p.get("thread_ts")]  # task-d's start, posted once
    assert d_start["channel"] == CHANNEL and d_start["text"] == "Reset started on web-d"
    [b_finished] = [p for p in posts if p.get("thread_ts")]  # in the thread of b's 0.1 start message
    assert (b_finished["channel"], b_finished["thread_ts"]) == (CHANNEL, TS_B)
    assert b_finished["text"] == "Replace failed" and not b_finished.get("reply_broadcast")
    assert "KPS.2003" in json.dumps(b_finished["blocks"])
    [b_edit] = updates(slack)  # b's 0.1 start message now shows the outcome
    assert (b_edit["channel"], b_edit["ts"]) == (CHANNEL, TS_B)
    assert slack.messages[(CHANNEL, TS_B)]["text"] == "Replace on db-b failed"
    assert not [p for p in posts if "old-01" in p["text"] or "api-c" in p["text"]]

    second = watch_once(env, tmp_path)  # nothing is announced twice
    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith("3 tasks running, 0 started, 0 finished; 0 delivered, 0 pending")
    assert len(new_posts(slack)) == 2 and len(updates(slack)) == 1

    kps.finish_task("task-c", success=True)  # started under 0.1, finishes under 0.2
    third = watch_once(env, tmp_path)
    assert third.returncode == 0, third.stderr
    assert third.stdout.startswith("2 tasks running, 0 started, 1 finished; 2 delivered, 0 pending")
    [c_finished] = new_posts(slack)[2:]
    assert (c_finished["channel"], c_finished["thread_ts"], c_finished["text"]) == (
        CHANNEL,
        TS_C,
        "Unbind succeeded",
    )
    [c_edit] = updates(slack)[1:]
    assert (c_edit["channel"], c_edit["ts"]) == (CHANNEL, TS_C)
    assert slack.messages[(CHANNEL, TS_C)]["text"] == "Unbind on api-c succeeded"

    fourth = watch_once(env, tmp_path)
    assert fourth.returncode == 0, fourth.stderr
    assert len(new_posts(slack)) == 3 and len(updates(slack)) == 2
    [lease] = rows(db, "select owner, generation from lease")
    assert not lease["owner"].startswith("old-host") and lease["generation"] >= 1


def test_the_migrated_file_keeps_threads_projects_and_waiting_entries(kps, slack, db, stored, tmp_path):
    result = watch_once(environment(kps, slack, db), tmp_path)
    assert result.returncode == 0, result.stderr
    assert versions(db) == [1, 2, 3, 4]
    threads = rows(db, "select project, task_id, task_time, channel, ts from threads order by task_id")
    assert [(t["project"], t["task_id"], t["task_time"], t["channel"], t["ts"]) for t in threads[:3]] == [
        (PROJECT, "task-a", stored["task-a"]["task_time"], CHANNEL, TS_A),
        (PROJECT, "task-b", stored["task-b"]["task_time"], CHANNEL, TS_B),
        (PROJECT, "task-c", stored["task-c"]["task_time"], CHANNEL, TS_C),
    ]
    assert [(t["task_id"], t["task_time"], t["channel"]) for t in threads[3:]] == [
        ("task-d", stored["task-d"]["task_time"], CHANNEL)  # its start message, posted now
    ]
    for table in ("tasks", "threads", "events", "polls", "outbox", "project_state"):
        assert {r["project"] for r in rows(db, f"select distinct project from {table}")} == {PROJECT}, table
    # b's entries carry its task_time and the keys 0.2 gives them; its finish and edit wait for its start.
    b_time = stored["task-b"]["task_time"]
    b_key = f"{PROJECT}:task-b:{b_time}:{CHANNEL}"
    b_entries = rows(
        db, "select kind, dedup_key, task_time, after, status from outbox where task_id = 'task-b'"
    )
    assert sorted(b_entries, key=lambda e: e["kind"]) == [
        entry("finished", f"finished:{b_key}", b_time, f"started:{b_key}"),
        entry("finished_edit", f"finished_edit:{b_key}", b_time, f"started:{b_key}"),
        entry("started", f"started:{b_key}", b_time, None),
    ]
    [state] = rows(db, "select project, baseline_at, failures from project_state")
    assert state == {"project": PROJECT, "baseline_at": 1764000000.0, "failures": 0}
    assert rows(db, "select key from meta where key like 'baseline%' or key like 'outage%'") == []
    tasks = rows(db, "select task_id, task_ms, state from tasks order by task_id")
    assert all(t["task_ms"] == int(stored[t["task_id"]]["task_time"]) for t in tasks)
    assert {t["task_id"]: t["state"] for t in tasks} == {
        "task-a": "finished",
        "task-b": "finished",
        "task-baseline-1": "running",
        "task-c": "running",
        "task-d": "running",
    }


def test_migration_alone_leaves_what_was_pending_pending(db):
    columns = "id, kind, task_id, status, attempts, next_attempt_at, payload, result_channel, result_ts"
    before = rows(db, f"select {columns} from outbox order by id")
    Store(db).close()  # what any command opening the file does first
    assert rows(db, f"select {columns} from outbox order by id") == before
    d_key = f"{PROJECT}:task-d:1764000100000:{CHANNEL}"
    b_key = f"{PROJECT}:task-b:1764000011000:{CHANNEL}"
    assert rows(db, "select dedup_key, after from outbox where status = 'pending' order by id") == [
        {"dedup_key": f"started:{d_key}", "after": None},
        {"dedup_key": f"finished:{b_key}", "after": f"started:{b_key}"},
        {"dedup_key": f"finished_edit:{b_key}", "after": f"started:{b_key}"},
    ]
    assert versions(db) == [1, 2, 3, 4]
    Store(db).close()  # opening it again migrates nothing
    assert len(rows(db, "select version from schema_version")) == 4


@pytest.mark.parametrize("attempt", range(3))
def test_two_processes_upgrading_one_file_at_once_migrate_it_once(kps, slack, db, tmp_path, attempt):
    env = environment(kps, slack, db)
    processes = [start_watch_once(env, tmp_path) for _ in range(2)]
    results = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=60)
            results.append((process.returncode, stdout, stderr))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for code, _stdout, stderr in results:
        assert "Traceback" not in stderr, stderr
        assert code == 0 or (code == 1 and "is watching" in stderr), stderr
    assert any(code == 0 for code, _, _ in results)
    migrated = [stderr for _, _, stderr in results if "to schema version 4" in stderr]
    assert len(migrated) == 1  # one process migrated the file; the other found it migrated
    assert versions(db) == [1, 2, 3, 4]
    assert len(rows(db, "select 1 from threads where task_id in ('task-a', 'task-b', 'task-c')")) == 3
    # Whichever ran, each pending entry was posted once.
    posts = new_posts(slack)
    assert sorted((p["text"], p.get("thread_ts")) for p in posts) == [
        ("Replace failed", TS_B),
        ("Reset started on web-d", None),
    ]
    assert [(u["ts"]) for u in updates(slack)] == [TS_B]


@pytest.mark.parametrize("baseline_entry", ["kept", "pruned by 0.1"])
def test_a_finish_waits_for_the_start_010_left_pending_in_its_retry_backoff(
    kps, slack, db, tmp_path, baseline_entry
):
    with sqlite3.connect(db) as conn:
        # 0.1 had just failed to post task-d's start and retries it in an hour.
        conn.execute("update outbox set next_attempt_at = ? where dedup_key = 'started:task-d'", (4e9,))
        if baseline_entry != "kept":  # 0.1 prunes entries after 30 days: the file no longer names its project
            conn.execute("delete from outbox where kind = 'baseline'")
    kps.finish_task("task-d", success=True)
    env = environment(kps, slack, db)
    first = watch_once(env, tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("2 tasks running, 0 started, 1 finished; 2 delivered, 3 pending"), (
        first.stdout
    )
    assert [p["text"] for p in new_posts(slack)] == ["Replace failed"]  # task-b's; nothing of task-d yet
    with sqlite3.connect(db) as conn:  # an hour later: the start is due again
        conn.execute("update outbox set next_attempt_at = 0 where dedup_key like 'started:%task-d%'")
    second = watch_once(env, tmp_path)
    assert second.returncode == 0, second.stderr
    d_start, d_finished = new_posts(slack)[1:]
    assert (d_start["text"], d_start.get("thread_ts")) == ("Reset started on web-d", None)
    [d_ts] = [r["ts"] for r in rows(db, "select ts from threads where task_id = 'task-d'")]
    assert slack.messages[(CHANNEL, d_ts)]["blocks"] != d_start["blocks"]  # the start message, edited
    assert (d_finished["text"], d_finished["thread_ts"]) == ("Reset succeeded", d_ts)
    [_, d_edit] = updates(slack)
    assert d_edit["ts"] == d_ts
    assert slack.messages[(CHANNEL, d_edit["ts"])]["text"] == "Reset on web-d succeeded"
    assert {r["project"] for r in rows(db, "select distinct project from outbox")} == {PROJECT}


def test_stuck_alerts_after_the_upgrade_reply_in_the_threads_of_010_start_messages(kps, slack, db, tmp_path):
    result = watch_once(environment(kps, slack, db, KPSBOT_STUCK_MINUTES="1"), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "3 stuck" in result.stdout
    posts = new_posts(slack)
    stuck = {p["text"].split(" on ")[1].split()[0]: p for p in posts if "still running" in p["text"]}
    assert sorted(stuck) == ["api-c", "old-01", "web-d"]
    assert not stuck["old-01"].get("thread_ts")  # a baseline task has no start message
    assert (stuck["api-c"]["thread_ts"], stuck["api-c"].get("reply_broadcast")) == (TS_C, True)
    [d_ts] = [r["ts"] for r in rows(db, "select ts from threads where task_id = 'task-d'")]
    assert (stuck["web-d"]["thread_ts"], stuck["web-d"].get("reply_broadcast")) == (d_ts, True)
    assert posts.index(next(p for p in posts if p["text"] == "Reset started on web-d")) < posts.index(
        stuck["web-d"]
    )
    assert watch_once(environment(kps, slack, db, KPSBOT_STUCK_MINUTES="1"), tmp_path).returncode == 0
    assert len(new_posts(slack)) == len(posts)  # once per task, across runs


def finish_c_with_the_default_retention(kps: Simulator, slack: FakeSlack, db: Path, tmp_path: Path) -> dict:
    """The file's clock says November 2025, so what 0.1 left pending is older than the default
    KPSBOT_RETENTION_DAYS: dropped as stale news, not posted a year late. task-c then finishes."""
    env = environment(kps, slack, db, KPSBOT_RETENTION_DAYS="30")
    first = watch_once(env, tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("3 tasks running, 0 started, 0 finished; 0 delivered, 0 pending")
    assert new_posts(slack) == [] and updates(slack) == []
    kps.finish_task("task-c", success=False, error_code="KPS.2003", error_msg="server is not running")
    assert watch_once(env, tmp_path).returncode == 0
    [c_finished] = new_posts(slack)
    return c_finished


def test_with_the_default_retention_year_old_news_is_dropped_but_a_running_task_keeps_its_thread(
    kps, slack, db, tmp_path
):
    c_finished = finish_c_with_the_default_retention(kps, slack, db, tmp_path)
    assert (c_finished["channel"], c_finished["thread_ts"], c_finished["text"]) == (
        CHANNEL,
        TS_C,
        "Unbind failed",
    )


def test_with_the_default_retention_the_start_message_of_a_long_running_task_is_still_edited(
    kps, slack, db, tmp_path
):
    finish_c_with_the_default_retention(kps, slack, db, tmp_path)
    assert [(u["channel"], u["ts"]) for u in updates(slack)] == [(CHANNEL, TS_C)]
