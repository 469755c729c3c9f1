"""Request security in HTTP mode, and secrets that never reach logs, output, the database or /healthz."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from urllib.parse import urlencode

import pytest
import requests
from bot_process import bot_environment, wait_until
from support.compose import compose_app
from support.fake_slack import FakeSlack, assert_valid_message
from support.slack_requests import SECRET, Bot, signed_headers

from kpsbot.services import HttpService
from kpsbot.settings import settings_from
from kpsbot.simulator import Simulator, SimulatorServer
from kpsbot.slack.blocks import NEXT
from kpsbot.slack.server import make_wsgi_app
from kpsbot.slack.workers import WorkerPool
from kpsbot.store import Store

PROJECT = "p1"


@pytest.fixture
def bot():
    sim = Simulator(project_id=PROJECT, ak="AK", sk="SK", tasks=15, seed=4)
    with SimulatorServer(sim) as server, FakeSlack() as fake:
        settings = settings_from(
            {
                "KPS_PROJECT_ID": PROJECT,
                "KPS_ENDPOINT": server.url,
                "CLOUD_SDK_AK": "AK",
                "CLOUD_SDK_SK": "SK",
                "SLACK_BOT_TOKEN": "xoxb-sec",
                "SLACK_SIGNING_SECRET": SECRET,
                "SLACK_API_URL": fake.url,
            }
        )
        work = WorkerPool(workers=4)
        store = Store(":memory:")
        app = compose_app(settings, store, work, kps_timeout=5)
        http = HttpService(make_wsgi_app(app, lambda: {"status": "ok"}), "127.0.0.1", 0)
        http.start()
        try:
            yield Bot(f"http://127.0.0.1:{http.port}", sim, fake)
        finally:
            http.stop(2)
            work.stop(2)
            store.close()


def press_body(bot: Bot, value: str, name: str, trigger: str = "trig-press") -> str:
    payload = {
        "type": "block_actions",
        "user": {"id": "U1"},
        "channel": {"id": "C1"},
        "trigger_id": trigger,
        "response_url": bot.fake.response_url(name),
        "actions": [{"type": "button", "action_id": NEXT, "block_id": "kps_tasks_paging", "value": value}],
    }
    return urlencode({"payload": json.dumps(payload)})


def settle(bot: Bot, seconds: float = 0.4) -> None:
    time.sleep(seconds)  # anything the request set off has had time to happen


# -- signature and timestamp on every kind of request -------------------------------------------


@pytest.mark.parametrize(
    "forge",
    [
        {"secret": "not-the-secret"},
        {"timestamp": int(time.time()) - 301},
        {"tamper": True},  # signed, then the body changed
        {"drop": "X-Slack-Signature"},
        {"drop": "X-Slack-Request-Timestamp"},
    ],
    ids=["wrong-secret", "old-timestamp", "tampered-body", "no-signature", "no-timestamp"],
)
def test_a_forged_button_press_gets_401_and_nothing_else(bot, forge):
    before = bot.sim.requests
    body = press_body(bot, "v2||10|", "forged")
    headers = signed_headers(body, **{k: v for k, v in forge.items() if k in ("secret", "timestamp")})
    if forge.get("tamper"):
        body = press_body(bot, "v2||0|", "forged")
    headers.pop(forge.get("drop", ""), None)
    response = requests.post(f"{bot.url}/slack/events", data=body, headers=headers, timeout=5)
    assert response.status_code == 401
    settle(bot)
    assert bot.sim.requests == before and bot.fake.responses == []


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("PUT", "/slack/events", 405),
        ("DELETE", "/slack/events", 405),
        ("PATCH", "/slack/events", 405),
        ("POST", "/slack/events/", 404),
        ("POST", "/slack/events/x", 404),
        ("POST", "/SLACK/EVENTS", 404),
        ("POST", "/slack//events", 404),
        ("POST", "/healthz", 405),
        ("PUT", "/healthz", 405),
        ("POST", "/", 404),
    ],
)
def test_a_genuine_signed_command_on_another_route_never_reaches_bolt(bot, method, path, status):
    before = bot.sim.requests
    body = urlencode(
        {
            "command": "/kps-tasks",
            "text": "",
            "user_id": "U1",
            "channel_id": "C1",
            "response_url": bot.fake.response_url("elsewhere"),
            "trigger_id": "trig-elsewhere",
        }
    )
    response = requests.request(
        method, f"{bot.url}{path}", data=body, headers=signed_headers(body), timeout=5
    )
    assert response.status_code == status
    settle(bot)
    assert bot.sim.requests == before and bot.fake.responses == []


def test_healthz_is_public_and_read_only(bot):
    assert requests.get(f"{bot.url}/healthz?x=1", timeout=5).json() == {"status": "ok"}
    assert requests.head(f"{bot.url}/healthz", timeout=5).status_code == 200


# -- Slack's retries -------------------------------------------------------------------------------


def test_a_retried_command_makes_no_second_kps_call_and_no_second_answer(bot):
    bot.command("", name="first", trigger_id="trig-retry")
    bot.reply("first")
    settle(bot)
    calls = bot.sim.requests
    retry = bot.command("", name="first", trigger_id="trig-retry", headers={"X-Slack-Retry-Num": "1"})
    assert retry.status == 200
    settle(bot)
    assert bot.sim.requests == calls
    assert len(bot.responses("first")) == 1


def test_a_retried_button_press_makes_no_second_kps_call(bot):
    body = press_body(bot, "v2||10|", "press", trigger="trig-press-retry")
    requests.post(f"{bot.url}/slack/events", data=body, headers=signed_headers(body), timeout=5)
    bot.reply("press")
    settle(bot)
    calls = bot.sim.requests
    headers = {**signed_headers(body), "X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
    assert requests.post(f"{bot.url}/slack/events", data=body, headers=headers, timeout=5).status_code == 200
    settle(bot)
    assert bot.sim.requests == calls and len(bot.responses("press")) == 1


def test_a_forged_request_cannot_make_a_genuine_retry_look_answered(bot):
    """The retry filter runs after verification: a forger who guesses a trigger_id cannot swallow it."""
    forged = bot.command("", name="victim", trigger_id="trig-victim", sign={"secret": "forger"})
    assert forged.status == 401
    bot.command("", name="victim", trigger_id="trig-victim", headers={"X-Slack-Retry-Num": "1"})
    assert_valid_message(bot.reply("victim"))


def test_a_chunked_body_over_the_limit_is_refused_before_bolt(bot):
    before = bot.sim.requests
    body = urlencode({"command": "/kps-tasks", "text": "x" * (100 * 1024)}).encode()

    def chunks():
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    try:
        response = requests.post(
            f"{bot.url}/slack/events", data=chunks(), headers=signed_headers(body.decode()), timeout=5
        )
        assert response.status_code in (413, 400)
    except requests.ConnectionError:
        pass  # the server may also just close the connection
    settle(bot)
    assert bot.sim.requests == before


# -- secrets ----------------------------------------------------------------------------------------

AKSK_SECRETS = {
    "CLOUD_SDK_AK": "AKMARK3R9QXZ",
    "CLOUD_SDK_SK": "SKMARK3R-7f1c2b9e-secret-key",
    "CLOUD_SDK_SECURITY_TOKEN": "STMARK3R-temporary-security-token",
}
TOKEN_SECRETS = {"KPS_AUTH_TOKEN": "IAMMARK3R-iam-subject-token-value"}
SLACK_SECRETS = {
    "SLACK_BOT_TOKEN": "xoxb-BOTMARK3R-1234",
    "SLACK_SIGNING_SECRET": "SIGNMARK3R-signing-secret",
}


def workload(bot_url: str, sim: Simulator, fake: FakeSlack, signing_secret: str) -> None:
    """Commands, buttons, KPS errors (401 included), Slack errors and the watcher's notifications."""
    client = Bot(bot_url, sim, fake)

    def command(text: str, name: str) -> None:
        client.command(text, name=name, sign={"secret": signing_secret})

    command("", "list")
    page = client.reply("list")
    command("web", "filter")
    command("status " + sim.running()[0]["task_id"], "status")
    command("help", "help")
    tampered = {"action_id": NEXT, "type": "button", "value": "v2|other|0|<!channel>"}
    for element in [*page["blocks"][-1]["elements"], tampered]:
        body = urlencode(
            {
                "payload": json.dumps(
                    {
                        "type": "block_actions",
                        "user": {"id": "U1"},
                        "channel": {"id": "C1"},
                        "trigger_id": f"t-{element['action_id']}",
                        "response_url": fake.response_url("button"),
                        "actions": [dict(element, block_id="kps_tasks_paging")],
                    }
                )
            }
        )
        requests.post(
            f"{bot_url}/slack/events", data=body, headers=signed_headers(body, secret=signing_secret)
        )
    for status in (401, 403, 500):
        sim.fail_next(1, status=status)
        command("", f"kps{status}")
    sim.fail_next(1, kind="nonjson", status=200)
    command("", "nonjson")
    fake.fail_next(1, 500, method="response_url")
    command("", "lost-reply")
    client.reply("filter")
    # The watcher: a start and a finish, Slack refusing and rate limiting, then KPS rejecting the credentials.
    task = sim.add_task(server_name="secret-test")
    fake.fail_next(1, 429)  # retried after Retry-After within the same delivery
    wait_until(lambda: any("secret-test" in str(c["args"]) for c in fake.calls_to("chat.postMessage")), 20)
    sim.finish_task(task["task_id"], success=False)
    fake.fail_next(1, 500)
    wait_until(lambda: fake.calls_to("chat.update"), 20, "the start message edited")
    fake.fail_next(1, error="channel_not_found", method="chat.postMessage")  # refuses the outage message
    sim.fail_next(6, status=401)
    wait_until(lambda: any(c["error"] == "channel_not_found" for c in fake.failed_calls), 20)
    wait_until(
        lambda: any("reachable again" in str(c["args"]) for c in fake.calls_to("chat.postMessage")), 20
    )


@pytest.mark.parametrize("auth", ["aksk", "token"])
def test_no_secret_in_logs_output_database_or_healthz(tmp_path, launch, auth):
    kps_secrets = AKSK_SECRETS if auth == "aksk" else TOKEN_SECRETS
    sim = Simulator(
        project_id="p-sec",
        ak=kps_secrets.get("CLOUD_SDK_AK"),
        sk=kps_secrets.get("CLOUD_SDK_SK"),
        token=kps_secrets.get("KPS_AUTH_TOKEN"),
        tasks=12,
        seed=9,
    )
    secrets = {**kps_secrets, **SLACK_SECRETS}
    db_path = tmp_path / "secret.db"
    with SimulatorServer(sim) as server, FakeSlack(bot_token=SLACK_SECRETS["SLACK_BOT_TOKEN"]) as fake:
        env = bot_environment(
            server.url,
            fake.url,
            KPS_PROJECT_ID="p-sec",
            KPSBOT_CHANNEL="C0SEC",
            KPSBOT_POLL_SECONDS="1",
            KPSBOT_OUTAGE_POLLS="2",
            KPSBOT_LOG_LEVEL="DEBUG",
            KPSBOT_DB=str(db_path),
            **{"CLOUD_SDK_AK": None, "CLOUD_SDK_SK": None, **secrets},
        )
        process = launch(env, f"secret-{auth}")
        process.wait_healthy()
        wait_until(lambda: (process.health() or {}).get("last_successful_poll"), 20, "the baseline poll")
        workload(process.url, sim, fake, SLACK_SECRETS["SLACK_SIGNING_SECRET"])
        health = requests.get(f"{process.url}/healthz", timeout=5).text
        assert process.stop(signal.SIGTERM) == 0
        assert fake.calls_to("chat.postMessage") and fake.failed_calls  # the workload really ran
    output = process.output()
    assert "DEBUG" in output and "KPS error" in output  # the log really was verbose and saw errors
    stored = b"".join(path.read_bytes() for path in tmp_path.glob("secret.db*"))
    for name, value in secrets.items():
        assert value not in output, f"{name} appears in the output"
        assert value.encode() not in stored, f"{name} appears in the database file"
        assert value not in health, f"{name} appears in /healthz"
    for path in tmp_path.glob("secret.db*"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path


@pytest.mark.parametrize(("mode", "warned"), [(0o644, True), (0o640, True), (0o600, False)])
def test_a_dotenv_readable_by_others_is_warned_about(tmp_path, mode, warned):
    sim = Simulator(project_id=PROJECT, ak="AK", sk="SK", tasks=1, seed=1)
    with SimulatorServer(sim) as server:
        env_file = tmp_path / ".env"
        env_file.write_text(
            f"KPS_ENDPOINT={server.url}\nKPS_PROJECT_ID={PROJECT}\nCLOUD_SDK_AK=AK\nCLOUD_SDK_SK=SK\n"
        )
        env_file.chmod(mode)
        env = {
            k: v for k, v in bot_environment("", "").items() if not k.startswith(("KPS", "SLACK", "CLOUD"))
        }
        result = subprocess.run(
            [sys.executable, "-m", "kpsbot", "tasks", "--json"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 0, result.stderr
    assert ("readable by other users" in result.stderr) is warned
    assert "SK\n" not in result.stderr
