"""`kpsbot watch --once` as a user runs it: a real process, real SQLite file, loopback KPS and Slack."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import pytest
from support.run_process import run_kpsbot

from .conftest import CHANNEL


@pytest.fixture
def env(sim, slack, tmp_path):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("KPS", "SLACK", "CLOUD_SDK"))}
    base.update(
        KPS_ENDPOINT=sim.url,
        KPS_PROJECT_ID="p1",
        CLOUD_SDK_AK="AK",
        CLOUD_SDK_SK="SK",
        SLACK_BOT_TOKEN="xoxb-test",
        SLACK_API_URL=slack.url,
        KPSBOT_CHANNEL=CHANNEL,
        KPSBOT_DB=str(tmp_path / "kpsbot.db"),
    )
    return base


def watch_once(env: dict, cwd) -> subprocess.CompletedProcess:
    return run_kpsbot(["watch", "--once"], cwd, env)


def test_watch_once_posts_and_prints_a_summary(sim, slack, env, tmp_path):
    sim.add_task()
    result = watch_once(env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "baseline: 1 tasks running; 1 delivered, 0 pending, 0 failed deliveries"
    sim.add_task(server_name="web-02")
    result = watch_once(env, tmp_path)
    assert result.stdout.startswith("2 tasks running, 1 started, 0 finished; 1 delivered")
    assert [c["args"]["channel"] for c in slack.calls_to("chat.postMessage")] == [CHANNEL, CHANNEL]
    assert os.stat(env["KPSBOT_DB"]).st_mode & 0o777 == 0o600


def test_json_log_lines_name_the_project_task_and_channel_they_are_about(sim, slack, env, tmp_path):
    env.update(KPSBOT_LOG_FORMAT="json", KPSBOT_LOG_LEVEL="INFO")
    sim.add_task()
    result = watch_once(env, tmp_path)
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    [baseline] = [line for line in lines if line["message"].startswith("baseline:")]
    assert baseline["project"] == "p1" and "channel" not in baseline
    task = sim.add_task(server_name="web-02")
    slack.fail_next(1, error="channel_not_found", method="chat.postMessage")
    result = watch_once(env, tmp_path)
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    [refused] = [line for line in lines if line["message"].startswith("Slack refused channel")]
    assert (refused["project"], refused["task_id"], refused["channel"]) == ("p1", task["task_id"], CHANNEL)


def test_watch_once_without_a_channel_prints_notifications(sim, env, tmp_path):
    del env["KPSBOT_CHANNEL"], env["SLACK_BOT_TOKEN"]
    watch_once(env, tmp_path)
    sim.add_task(operate_type="RUNNING_UNBIND", server_name="web-07")
    result = watch_once(env, tmp_path)
    assert result.returncode == 0
    assert "Unbind started on web-07" in result.stdout and "1 started" in result.stdout


def test_failed_poll_exits_1(sim, env, tmp_path):
    sim.fail_next(10, status=500)
    result = watch_once(env, tmp_path)
    assert result.returncode == 1 and result.stdout.startswith("poll failed:")


def test_permanent_slack_error_is_shown_and_exits_1(slack, env, tmp_path):
    slack.fail_next(1, error="channel_not_found")
    result = watch_once(env, tmp_path)
    assert result.returncode == 1
    assert "1 failed deliveries" in result.stdout and "channel_not_found" in result.stderr


def test_process_killed_after_storing_sends_on_next_run(sim, slack, env, tmp_path):
    watch_once(env, tmp_path)
    task = sim.add_task(server_name="web-killed")
    with socket.socket() as black_hole:  # accepts connections, never answers: the send hangs
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(8)
        hung_env = dict(env, SLACK_API_URL=f"http://127.0.0.1:{black_hole.getsockname()[1]}/api/")
        proc = subprocess.Popen(
            [sys.executable, "-m", "kpsbot", "watch", "--once"],
            env=hung_env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 20
            started = f"started:p1:{task['task_id']}:{task['task_time']}:{CHANNEL}"
            while not stored(env["KPSBOT_DB"], started):
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
            time.sleep(0.2)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert not [c for c in slack.calls_to("chat.postMessage") if "web-killed" in c["args"]["text"]]
    blocked = watch_once(env, tmp_path)  # the killed process still holds the watcher lease
    assert blocked.returncode == 1 and "is watching" in blocked.stderr
    with sqlite3.connect(env["KPSBOT_DB"]) as conn:  # fast-forward to the lease's expiry
        conn.execute("update lease set expires_at = 0")
    result = watch_once(env, tmp_path)
    assert result.returncode == 0 and "1 delivered" in result.stdout
    watch_once(env, tmp_path)
    assert len([c for c in slack.calls_to("chat.postMessage") if "web-killed" in c["args"]["text"]]) == 1


def stored(path: str, dedup_key: str) -> bool:
    try:
        with sqlite3.connect(path) as conn:
            return (
                conn.execute("select 1 from outbox where dedup_key = ?", (dedup_key,)).fetchone() is not None
            )
    except sqlite3.OperationalError:
        return False  # not created yet
