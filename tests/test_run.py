"""`kpsbot run` as a real process: serves /kps-tasks and /healthz, stops cleanly on SIGTERM/SIGINT."""

import signal
import subprocess
import sys
import time

import pytest
import requests
from support.fake_slack import FakeSlack, assert_valid_message
from support.run_process import free_port, run_environment, start, stop_within, wait_healthy, wait_until
from support.slack_requests import SECRET, Bot

from kpsbot.simulator import Simulator, SimulatorServer

PROJECT = "p-run"


@pytest.fixture
def backends():
    sim = Simulator(project_id=PROJECT, ak="AK", sk="SK", tasks=12, seed=2)
    with SimulatorServer(sim) as server, FakeSlack() as fake:
        yield sim, server.url, fake


def environment(sim_url: str, fake: FakeSlack, **extra: str) -> dict:
    return run_environment(
        sim_url, fake.url, PROJECT, SLACK_BOT_TOKEN="xoxb-run", SLACK_SIGNING_SECRET=SECRET, **extra
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_http_mode_serves_a_page_and_stops_cleanly(backends, tmp_path, signum):
    sim, sim_url, fake = backends
    port = free_port()
    process = start(environment(sim_url, fake, PORT=str(port)), tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        health = wait_healthy(url, process)
        assert health["status"] == "ok" and health["mode"] == "http" and health["version"]
        bot = Bot(url, sim, fake)
        ack = bot.command("", name="run")
        assert ack.status == 200
        page = bot.reply("run")
        assert_valid_message(page)
        assert "of *12*" in str(page)
        sim.delay = 3.0  # a KPS call still in flight must not hold up the exit
        bot.command("", name="inflight")
        time.sleep(0.3)
    finally:
        code, seconds = stop_within(process, signum)
    stderr = process.stderr.read()
    assert code == 0, stderr
    assert seconds < 10
    assert "Traceback" not in stderr
    assert "xoxb-run" not in stderr and SECRET not in stderr


def test_socket_mode_serves_healthz_when_port_is_set_and_stops_cleanly(backends, tmp_path):
    # The fake Slack has no WebSocket endpoint, so the Socket Mode client keeps trying to connect;
    # /healthz is still served and SIGTERM still ends the process in time.
    sim, sim_url, fake = backends
    port = free_port()
    env = environment(sim_url, fake, SLACK_APP_TOKEN="xapp-run", PORT=str(port))
    del env["SLACK_SIGNING_SECRET"]
    process = start(env, tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        health = wait_healthy(url, process)
        assert health["mode"] == "socket"
        assert requests.post(f"{url}/slack/events", data="x", timeout=5).status_code == 404
    finally:
        code, seconds = stop_within(process, signal.SIGTERM)
    stderr = process.stderr.read()
    assert code == 0, stderr
    assert seconds < 10
    assert "xapp-run" not in stderr and "xoxb-run" not in stderr


@pytest.mark.parametrize(
    ("drop", "named"),
    [
        ("SLACK_BOT_TOKEN", "SLACK_BOT_TOKEN"),
        ("SLACK_SIGNING_SECRET", "SLACK_SIGNING_SECRET"),
        ("KPS_PROJECT_ID", "KPS_PROJECT_ID"),
    ],
)
def test_missing_settings_exit_2_with_one_line(backends, tmp_path, drop, named):
    sim, sim_url, fake = backends
    env = environment(sim_url, fake)
    del env[drop]
    result = subprocess.run(
        [sys.executable, "-m", "kpsbot", "run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0]


def test_run_also_watches_posts_notifications_and_reports_the_poll(backends, tmp_path):
    sim, sim_url, fake = backends
    port = free_port()
    env = environment(sim_url, fake, PORT=str(port), KPSBOT_CHANNEL="C0RUN", KPSBOT_POLL_SECONDS="1")
    process = start(env, tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        health = wait_until(
            lambda: (h := requests.get(f"{url}/healthz", timeout=2).json())["last_successful_poll"] and h
        )
        assert health["watcher"] == "leader"
        task = sim.add_task(server_name="run-started")
        fake.wait_for_calls("chat.postMessage", 2, timeout=15)  # the baseline summary, then the start
        texts = [str(c["args"]) for c in fake.calls_to("chat.postMessage")]
        assert "12" in texts[0] and "run-started" in texts[1]
        sim.finish_task(task["task_id"], success=True)
        fake.wait_for_calls("chat.update", 1, timeout=15)
    finally:
        code, _ = stop_within(process, signal.SIGTERM)
    assert code == 0, process.stderr.read()
    assert all(c["args"]["channel"] == "C0RUN" for c in fake.calls_to("chat.postMessage"))


def test_run_without_slack_settings_runs_the_watcher_alone(backends, tmp_path):
    sim, sim_url, fake = backends
    env = environment(sim_url, fake, KPSBOT_POLL_SECONDS="1", KPSBOT_DB=str(tmp_path / "alone.db"))
    for name in ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET"):
        del env[name]
    process = start(env, tmp_path)
    try:
        wait_until(lambda: (tmp_path / "alone.db").exists(), timeout=15)
        time.sleep(1.5)
        assert process.poll() is None
    finally:
        code, _ = stop_within(process, signal.SIGTERM)
    stderr = process.stderr.read()
    assert code == 0, stderr
    assert "running the watcher only" in stderr
    assert fake.calls_to("chat.postMessage") == []


def test_unreachable_slack_exits_1_naming_slack(backends, tmp_path):
    sim, sim_url, fake = backends
    env = environment(sim_url, fake, PORT=str(free_port()))
    env["SLACK_API_URL"] = f"http://127.0.0.1:{free_port()}/api/"  # nothing listens there
    result = subprocess.run(
        [sys.executable, "-m", "kpsbot", "run", "--host", "127.0.0.1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert "cannot reach Slack" in result.stderr and "Traceback" not in result.stderr


def metric_samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a /metrics answer, parsed by prometheus-client's own text parser."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_move_with_commands_polls_and_notifications(backends, tmp_path):
    sim, sim_url, fake = backends
    port = free_port()
    env = environment(sim_url, fake, PORT=str(port), KPSBOT_CHANNEL="C0RUN", KPSBOT_POLL_SECONDS="1")
    process = start(env, tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        first = requests.get(f"{url}/metrics", timeout=5)
        assert first.status_code == 200 and first.headers["Content-Type"].startswith("text/plain")
        samples = metric_samples(first.text)
        for reason in ("rateLimited", "serverError", "clientError", "authError", "other"):
            assert (("kpsbot_notifications_failed_total", (("reason", reason),))) in samples  # there at 0
        bot = Bot(url, sim, fake)
        bot.command("", name="m1")
        bot.reply("m1")
        bot.command("help", name="m2")
        fake.fail_next(1, status=429, retry_after=12, method="chat.postMessage")  # longer than a call waits
        sim.add_task(server_name="metrics-1")
        fake.wait_for_calls("chat.postMessage", 2, timeout=40)  # the baseline, then the start

        def counted() -> dict | None:
            now = metric_samples(requests.get(f"{url}/metrics", timeout=5).text)
            started = now.get(("kpsbot_notifications_total", (("kind", "started"),)), 0)
            return now if started >= 1 else None

        samples = wait_until(counted, timeout=40, what="the start counted")
    finally:
        code, _ = stop_within(process, signal.SIGTERM)
    text = first.text + str(samples)
    assert code == 0
    assert samples[("kpsbot_commands_total", (("result", "ok"),))] == 1
    assert samples[("kpsbot_commands_total", (("result", "help"),))] == 1
    assert samples[("kpsbot_polls_total", (("project", PROJECT), ("result", "ok")))] >= 2
    assert samples[("kpsbot_running_tasks", (("project", PROJECT),))] == 13
    assert samples[("kpsbot_notifications_total", (("kind", "baseline"),))] == 1
    assert samples[("kpsbot_notifications_failed_total", (("reason", "rateLimited"),))] == 1
    assert samples[("kpsbot_kps_requests_total", (("endpoint", "running-tasks"), ("status", "2xx")))] >= 2
    assert samples[("kpsbot_watcher_leader", ())] == 1 and ("kpsbot_outbox_pending", ()) in samples
    assert samples[("kpsbot_poll_duration_seconds_count", (("project", PROJECT),))] >= 2
    for secret in ("xoxb-run", SECRET, "AK", "SK"):
        assert f'"{secret}"' not in text
    assert "metrics-1" not in text  # no server names in labels


def test_the_watcher_alone_serves_healthz_and_metrics_on_port(backends, tmp_path):
    sim, sim_url, fake = backends
    port = free_port()
    env = environment(sim_url, fake, KPSBOT_POLL_SECONDS="1", PORT=str(port))
    for name in ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET"):
        del env[name]
    process = start(env, tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        health = wait_until(
            lambda: (h := wait_healthy(url, process))["last_successful_poll"] and h, timeout=20
        )
        assert health["mode"] == "watcher" and health["projects"][PROJECT]["resolved"]
        samples = metric_samples(requests.get(f"{url}/metrics", timeout=5).text)
        assert samples[("kpsbot_polls_total", (("project", PROJECT), ("result", "ok")))] >= 1
        assert requests.post(f"{url}/slack/events", data="x", timeout=5).status_code == 404
    finally:
        code, _ = stop_within(process, signal.SIGTERM)
    assert code == 0, process.stderr.read()


def test_the_home_tab_is_published_when_opened(backends, tmp_path):
    from support.fake_slack import assert_valid_view

    sim, sim_url, fake = backends
    port = free_port()
    process = start(environment(sim_url, fake, PORT=str(port), KPSBOT_CHANNEL="C0RUN"), tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: (h := wait_healthy(url, process))["last_successful_poll"] and h, timeout=20)
        bot = Bot(url, sim, fake)
        answer = bot.event({"type": "app_home_opened", "user": "U1", "channel": "D1", "tab": "home"})
        assert answer.status == 200
        [call] = fake.wait_for_calls("views.publish", 1, timeout=15)
    finally:
        code, _ = stop_within(process, signal.SIGTERM)
    assert code == 0
    view = call["args"]["view"]
    assert_valid_view(view)
    assert call["args"]["user_id"] == "U1"
    text = str(view)
    assert PROJECT in text and "C0RUN" in text
