"""`kpsbot run` in Socket Mode as a real process: commands and buttons arrive over the WebSocket, are
acked on it, answered through response_url; it reconnects after a drop and stops cleanly."""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import dataclass

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from support.fake_slack import FakeSlack, assert_valid_message
from support.fake_socket_mode import FakeSocketMode
from support.run_process import free_port, run_environment, start, stop_within, wait_healthy
from support.slack_requests import Bot

from kpsbot.simulator import Simulator, SimulatorServer

PROJECT = "p-socket"
BOT_TOKEN = "xoxb-socket-bot"
APP_TOKEN = "xapp-socket-app"
TASKS = 12  # more than one page (10 a page)


@dataclass
class SocketBot(Bot):
    """A `kpsbot run` in Socket Mode: the same commands and presses as `Bot`, sent as envelopes."""

    socket_mode: FakeSocketMode | None = None
    process: subprocess.Popen | None = None

    def send_command(self, text: str = "", *, name: str) -> dict:
        """Send `/kps-tasks text` and return the app's ack of it."""
        envelope_id = self.socket_mode.send_envelope("slash_commands", self.command_form(text, name=name))
        return self.socket_mode.wait_for_ack(envelope_id, timeout=10)

    def send_press(self, action_id: str, value: str, *, name: str) -> dict:
        envelope_id = self.socket_mode.send_envelope(
            "interactive", self.press_payload(action_id, value, name=name)
        )
        return self.socket_mode.wait_for_ack(envelope_id, timeout=10)

    def stop(self) -> tuple[int, float, str, str]:
        """SIGTERM; `(exit status, seconds, stdout, stderr)`."""
        code, seconds = stop_within(self.process, signal.SIGTERM)
        out, err = self.process.communicate()
        return code, seconds, out, err


@pytest.fixture
def backends():
    sim = Simulator(project_id=PROJECT, ak="AK", sk="SK", tasks=TASKS, seed=3)
    with (
        SimulatorServer(sim) as server,
        FakeSocketMode() as socket_mode,
        FakeSlack(bot_token=BOT_TOKEN, app_token=APP_TOKEN, socket_mode=socket_mode) as fake,
    ):
        yield sim, server.url, fake, socket_mode


def socket_environment(sim_url: str, fake: FakeSlack, **extra: str) -> dict:
    # No SLACK_SIGNING_SECRET: Socket Mode does not need one.
    settings = {"SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_APP_TOKEN": APP_TOKEN, **extra}
    return run_environment(sim_url, fake.url, PROJECT, **settings)


@pytest.fixture
def bot(backends, tmp_path):
    sim, sim_url, fake, socket_mode = backends
    process = start(socket_environment(sim_url, fake), tmp_path)
    running = SocketBot("", sim, fake, socket_mode=socket_mode, process=process)
    try:
        socket_mode.wait_for_connections(1, timeout=15)
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def assert_stops_cleanly(bot: SocketBot) -> str:
    code, seconds, out, err = bot.stop()
    assert code == 0, err
    assert seconds < 10
    assert "Traceback" not in err
    for secret in (BOT_TOKEN, APP_TOKEN):
        assert secret not in out and secret not in err
    return err


def next_button(page: dict) -> str:
    for block in page["blocks"]:
        for element in block.get("elements", []):
            if element.get("action_id") == "kps_tasks_next":
                return element["value"]
    raise AssertionError("the page has no Next button")


def test_command_is_acked_on_the_socket_and_answered_through_response_url(bot):
    ack = bot.send_command(name="first")
    assert "payload" not in ack  # a plain ack: the page follows through response_url
    page = bot.reply("first")
    assert_valid_message(page)
    assert page["response_type"] == "ephemeral"
    assert f"of *{TASKS}*" in str(page)

    help_ack = bot.send_command("help", name="help")  # help is small enough to come back in the ack
    assert help_ack["payload"]["response_type"] == "ephemeral"
    assert_valid_message(help_ack["payload"])

    # slack-sdk may open a spare URL while its first connection starts; each call uses the app token.
    tokens = {(call["method"] == "apps.connections.open", call["token"]) for call in bot.fake.calls}
    assert tokens == {(True, APP_TOKEN), (False, BOT_TOKEN)}
    assert_stops_cleanly(bot)
    assert bot.socket_mode.close_codes == [1000]  # closed the WebSocket properly, not just dropped it


def test_next_button_replaces_the_page(bot):
    bot.send_command(name="first")
    value = next_button(bot.reply("first"))
    ack = bot.send_press("kps_tasks_next", value, name="next")
    assert "payload" not in ack
    page = bot.reply("next")
    assert_valid_message(page)
    assert page["replace_original"] is True
    assert f"*11–{TASKS}* of *{TASKS}*" in str(page)

    bot.send_press("kps_tasks_next", "tampered", name="bad")
    assert "warning" in str(bot.reply("bad"))
    assert_stops_cleanly(bot)


def test_reconnects_after_the_connection_drops(bot):
    bot.send_command(name="before")
    bot.reply("before")
    bot.socket_mode.drop()
    bot.socket_mode.wait_for_connections(2, timeout=15)
    assert len(bot.fake.calls_to("apps.connections.open")) >= 2  # a fresh URL for the new connection
    bot.send_command(name="after")
    assert f"of *{TASKS}*" in str(bot.reply("after"))
    assert_stops_cleanly(bot)


def test_healthz_and_metrics_are_served_on_port_beside_the_socket(backends, tmp_path):
    sim, sim_url, fake, socket_mode = backends
    port = free_port()
    process = start(socket_environment(sim_url, fake, PORT=str(port)), tmp_path)
    bot = SocketBot("", sim, fake, socket_mode=socket_mode, process=process)
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_healthy(url, process)["mode"] == "socket"
        socket_mode.wait_for_connections(1, timeout=15)
        assert requests.post(f"{url}/slack/events", data="x", timeout=5).status_code == 404
        bot.send_command(name="page")
        assert f"of *{TASKS}*" in str(bot.reply("page"))
        metrics = requests.get(f"{url}/metrics", timeout=5)
        assert metrics.status_code == 200 and metrics.headers["Content-Type"].startswith("text/plain")
        commands = {
            sample.labels["result"]: sample.value
            for family in text_string_to_metric_families(metrics.text)
            for sample in family.samples
            if sample.name == "kpsbot_commands_total"
        }
        assert commands["ok"] == 1 and commands["refused"] == 0  # the command sent over the socket
    finally:
        assert_stops_cleanly(bot)


def test_invalid_app_token_exits_1_with_one_line(backends, tmp_path):
    sim, sim_url, fake, socket_mode = backends
    env = socket_environment(sim_url, fake, SLACK_APP_TOKEN="xapp-revoked")
    result = subprocess.run(
        [sys.executable, "-m", "kpsbot", "run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("kpsbot:")]
    assert len(errors) == 1 and "invalid_auth" in errors[0] and "SLACK_APP_TOKEN" in errors[0]
    assert "Traceback" not in result.stderr
    assert "xapp-revoked" not in result.stderr + result.stdout
    assert socket_mode.connections == 0
