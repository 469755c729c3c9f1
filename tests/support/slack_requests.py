"""Signed Slack requests (slash commands, button presses, events) to a running kpsbot, and their answers."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import requests
from slack_sdk.signature import SignatureVerifier

SECRET = "test-signing-secret"


def signed_headers(
    body: str,
    *,
    secret: str = SECRET,
    timestamp: int | None = None,
    content_type: str = "application/x-www-form-urlencoded",
) -> dict:
    timestamp = int(time.time()) if timestamp is None else timestamp
    signature = SignatureVerifier(secret).generate_signature(timestamp=str(timestamp), body=body)
    return {
        "Content-Type": content_type,
        "X-Slack-Request-Timestamp": str(timestamp),
        "X-Slack-Signature": signature,
    }


@dataclass
class Answer:
    status: int
    body: dict | str
    seconds: float
    at: float  # wall-clock time the answer arrived


@dataclass
class Bot:
    """A running kpsbot HTTP server plus the simulator and fake Slack behind it."""

    url: str
    sim: Any
    fake: Any  # support.fake_slack.FakeSlack
    counter: int = 0
    extra_env: dict = field(default_factory=dict)
    store: Any = None  # the kpsbot.store.Store the app uses, when the test built it
    settings: Any = None  # the kpsbot.settings.Settings the app was composed from

    def _post(self, body: str, headers: dict) -> Answer:
        started = time.monotonic()
        response = requests.post(f"{self.url}/slack/events", data=body.encode(), headers=headers, timeout=10)
        seconds = time.monotonic() - started
        try:
            payload = response.json() if response.content else ""
        except ValueError:
            payload = response.text
        return Answer(response.status_code, payload, seconds, time.time())

    def command(
        self,
        text: str = "",
        *,
        user: str = "U1",
        channel: str = "C1",
        name: str | None = None,
        trigger_id: str | None = None,
        headers: dict | None = None,
        sign: dict | None = None,
    ) -> Answer:
        form = self.command_form(text, user=user, channel=channel, name=name, trigger_id=trigger_id)
        body = urlencode(form)
        return self._post(body, {**signed_headers(body, **(sign or {})), **(headers or {})})

    def command_form(
        self,
        text: str = "",
        *,
        user: str = "U1",
        channel: str = "C1",
        name: str | None = None,
        trigger_id: str | None = None,
    ) -> dict:
        """A `/kps-tasks` slash command: a form over HTTP, an envelope payload in Socket Mode."""
        self.counter += 1
        return {
            "command": "/kps-tasks",
            "text": text,
            "user_id": user,
            "user_name": "someone",
            "channel_id": channel,
            "team_id": "T000",
            "response_url": self.fake.response_url(name or f"cmd{self.counter}"),
            "trigger_id": trigger_id or f"trigger-{self.counter}-{time.monotonic_ns()}",
        }

    def press(
        self, action_id: str, value: str, *, user: str = "U1", channel: str = "C1", name: str | None = None
    ) -> Answer:
        payload = self.press_payload(action_id, value, user=user, channel=channel, name=name)
        body = urlencode({"payload": json.dumps(payload)})
        return self._post(body, signed_headers(body))

    def press_payload(
        self, action_id: str, value: str, *, user: str = "U1", channel: str = "C1", name: str | None = None
    ) -> dict:
        """The `block_actions` payload of a paging button press."""
        self.counter += 1
        return {
            "type": "block_actions",
            "team": {"id": "T000"},
            "user": {"id": user},
            "channel": {"id": channel},
            "trigger_id": f"trigger-{self.counter}-{time.monotonic_ns()}",
            "response_url": self.fake.response_url(name or f"btn{self.counter}"),
            "container": {"type": "message", "is_ephemeral": True},
            "actions": [
                {
                    "type": "button",
                    "action_id": action_id,
                    "block_id": "kps_tasks_paging",
                    "value": value,
                    "action_ts": str(time.time()),
                }
            ],
        }

    def event(self, event: dict, *, sign: dict | None = None, headers: dict | None = None) -> Answer:
        """An Events API request carrying `event`."""
        return self.post_json(self.event_payload(event), sign=sign, headers=headers)

    def post_json(self, payload: dict, *, sign: dict | None = None, headers: dict | None = None) -> Answer:
        """A signed JSON request, as Slack sends events and `url_verification` challenges."""
        body = json.dumps(payload)
        signed = signed_headers(body, content_type="application/json", **(sign or {}))
        return self._post(body, {**signed, **(headers or {})})

    def event_payload(self, event: dict) -> dict:
        """The `event_callback` wrapper Slack puts around an event, over HTTP and in Socket Mode."""
        self.counter += 1
        return {
            "token": "unused-verification-token",
            "team_id": "T000",
            "api_app_id": "A000",
            "event": event,
            "type": "event_callback",
            "event_id": f"Ev{self.counter:08d}",
            "event_time": int(time.time()),
            "authorizations": [
                {"team_id": "T000", "user_id": "U000BOT", "is_bot": True, "is_enterprise_install": False}
            ],
        }

    def responses(self, name: str, n: int = 1, timeout: float = 10) -> list[dict]:
        """The bodies posted to response_url `name` (waits until there are `n`)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.fake.responses if r["name"] == name]
            if len(found) >= n or time.monotonic() > deadline:
                assert len(found) >= n, f"expected {n} responses to {name}, got {len(found)}"
                return found
            time.sleep(0.02)

    def reply(self, name: str, timeout: float = 10) -> dict:
        return self.responses(name, 1, timeout)[0]["body"]
