"""`kpsbot demo` as a real process: both halves of the product in the terminal, optionally in Slack."""

import os
import re
import subprocess
import sys
import time

import requests
from support.fake_slack import FakeSlack, assert_valid_message
from support.run_process import free_port
from support.slack_requests import SECRET, Bot

from kpsbot.simulator import Simulator


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KPS", "SLACK", "CLOUD_SDK", "PORT"))}
    env.update(extra)
    return env


def test_demo_shows_a_page_and_start_and_finish_notifications_then_exits_0(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "kpsbot", "demo", "--duration", "16", "--db", str(tmp_path / "demo.db")],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = result.stdout
    assert result.returncode == 0, result.stderr
    assert "What /kps-tasks shows in Slack" in out
    assert re.search(r"Showing 1–3 of 3 running tasks", out)
    # Two projects in two regions, their IDs looked up in the simulator's IAM by name.
    assert "Project IDs looked up in IAM by name" in out
    assert re.search(r"cn-north-4: project ID [0-9a-f]{32} \(from iam\)", out)
    assert re.search(r"ap-southeast-1: project ID [0-9a-f]{32} \(from iam\)", out)
    assert "2 tasks already running" in out and "1 task already running" in out
    assert re.search(r"(Reset|Replace|Unbind) started on ", out)
    assert re.search(r"(succeeded|failed) after about", out)  # the three baseline tasks end within 12 s
    assert re.search(r"Demo over after \d+ polls: [1-9]\d* task starts and [1-9]\d* finishes recorded", out)
    assert "Traceback" not in result.stderr
    assert (tmp_path / "demo.db").exists()
    # The transcript is the demo's own output: no log records in it (they were raw lines before).
    log_line = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO) ", re.MULTILINE)
    assert not log_line.search(out) and not log_line.search(result.stderr)


def test_demo_cycles_bound_and_blocks_json(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "kpsbot", "demo", "--cycles", "1", "--blocks"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Demo over after 1 polls" in result.stdout
    assert '"type": "header"' in result.stdout  # the page's Block Kit JSON


def test_demo_posts_to_slack_and_serves_kps_tasks_when_slack_is_configured(tmp_path):
    with FakeSlack() as fake:
        port = free_port()
        env = clean_env(
            SLACK_BOT_TOKEN="xoxb-demo",
            SLACK_SIGNING_SECRET=SECRET,
            SLACK_API_URL=fake.url,
            KPSBOT_CHANNEL="C0DEMO",
            PORT=str(port),
        )
        process = subprocess.Popen(
            [sys.executable, "-m", "kpsbot", "demo", "--duration", "12"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            bot = Bot(f"http://127.0.0.1:{port}", Simulator(), fake)
            deadline = time.monotonic() + 15
            while True:
                try:
                    answer = bot.command("", name="demo")
                    break
                except requests.ConnectionError:
                    assert time.monotonic() < deadline, "demo did not serve /kps-tasks"
                    time.sleep(0.2)
            assert answer.status == 200
            page = bot.reply("demo")
            assert_valid_message(page)
            assert "Running KPS key-pair tasks" in str(page)
            out, err = process.communicate(timeout=40)
        finally:
            if process.poll() is None:
                process.kill()
        assert process.returncode == 0, err
        posts = fake.calls_to("chat.postMessage")
        assert posts and all(p["args"]["channel"] == "C0DEMO" for p in posts)
        assert "Watching project" in out and "Serving /kps-tasks against the simulator" in out
        assert "xoxb-demo" not in out + err and SECRET not in out + err


def test_demo_with_an_unusable_db_path_says_so_in_one_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kpsbot",
            "demo",
            "--cycles",
            "1",
            "--db",
            str(tmp_path / "no" / "such" / "x.db"),
        ],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("kpsbot:")] == [
        line for line in result.stderr.splitlines() if line.strip()
    ]
    assert "--db" in result.stderr


def test_demo_with_unreachable_slack_exits_1_without_a_traceback(tmp_path):
    env = clean_env(
        SLACK_BOT_TOKEN="xoxb-demo-unreachable",
        SLACK_SIGNING_SECRET=SECRET,
        SLACK_API_URL=f"http://127.0.0.1:{free_port()}/api/",
        PORT=str(free_port()),
    )
    result = subprocess.run(
        [sys.executable, "-m", "kpsbot", "demo", "--cycles", "1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert "cannot reach Slack" in result.stderr and "Traceback" not in result.stderr
    assert "xoxb-demo-unreachable" not in result.stderr + result.stdout
