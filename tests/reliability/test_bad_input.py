"""Bad input from users, from Slack payloads and from KPS: a clear answer or a skipped row, never a crash.

Property tests go through Bolt's `App.dispatch` with properly signed requests (fast); the hand-picked
cases go through the real HTTP server.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from urllib.parse import urlencode

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from requests.adapters import HTTPAdapter
from slack_bolt import BoltRequest
from support.compose import compose_app
from support.fake_slack import FakeSlack, assert_valid_message
from support.slack_requests import SECRET, signed_headers

from kpsbot.kps.auth import AkSkAuth
from kpsbot.kps.client import KpsClient
from kpsbot.settings import settings_from
from kpsbot.simulator import Simulator, SimulatorServer
from kpsbot.slack.blocks import NEXT, PREV, REFRESH
from kpsbot.store import Store
from kpsbot.watch.cycle import WatchedProject, Watcher
from kpsbot.watch.loop import WatcherLoop
from kpsbot.watch.outbox import Outbox, Pacer
from kpsbot.watch.plan import ProjectInfo, Route

PROJECT = "p1"
COMMAND_EXAMPLES = 300
BUTTON_EXAMPLES = 200
KPS_BODY_EXAMPLES = 150
MARKUP = ("<!channel>", "<!here>", "<!everyone>", "<@U123>", "<#C123|general>", "<https://evil.example|x>")
DATE_TOKEN = re.compile(r"<!date\^\d+\^[^|>]*\|[^<>]*>")
HOSTILE = "<!channel> `tick` *bold* <@U999> &amp; <https://evil.example|click>"


def texts(value) -> list[str]:
    """Every string Slack renders from a message: top-level text and every nested `text`."""
    if isinstance(value, dict):
        found = [value["text"]] if isinstance(value.get("text"), str) else []
        return found + [s for v in value.values() for s in texts(v)]
    if isinstance(value, list):
        return [s for v in value for s in texts(v)]
    return []


def assert_no_raw_markup(message: dict) -> None:
    """No `<...>` in anything Slack renders except kpsbot's own date tokens: no mention, link or ping."""
    for text in texts(message):
        assert "<" not in DATE_TOKEN.sub("", text), f"unescaped markup in {text!r:.300}"


class Inline:
    """An executor that runs the slow half at once, so each dispatch finishes its reply before returning."""

    def submit(self, fn, *args, **kwargs) -> bool:
        fn(*args, **kwargs)
        return True


@pytest.fixture(scope="module")
def served():
    sim = Simulator(project_id=PROJECT, ak="AK", sk="SK", tasks=8, seed=3)
    sim.add_task(server_name=HOSTILE, keypair_name="<@U123>", task_id="t-<!here>`")
    sim.add_task(server_name="x" * 100_000, keypair_name="`" * 300, server_id="<!channel>")
    with SimulatorServer(sim) as server, FakeSlack() as fake:
        app_settings = settings_from(
            {
                "KPS_PROJECT_ID": PROJECT,
                "KPS_ENDPOINT": server.url,
                "CLOUD_SDK_AK": "AK",
                "CLOUD_SDK_SK": "SK",
                "SLACK_BOT_TOKEN": "xoxb-bad-input",
                "SLACK_SIGNING_SECRET": SECRET,
                "SLACK_API_URL": fake.url,
            }
        )
        app = compose_app(app_settings, Store(":memory:"), Inline(), kps_timeout=5)
        yield app, sim, fake


_names = itertools.count()


def dispatch(app, fake: FakeSlack, make_form, timeout: float = 5.0) -> tuple[int, dict | str, dict | None]:
    """(ack status, ack body, reply posted to response_url or None) for one signed request.

    `make_form(response_url)` builds the form fields of the request.
    """
    name = f"r{next(_names)}"
    body = urlencode(make_form(fake.response_url(name)))
    response = app.dispatch(BoltRequest(body=body, headers=signed_headers(body)))
    ack = response.body
    try:
        ack = json.loads(ack) if ack else ""
    except ValueError:
        pass
    reply = None
    if response.status == 200 and not ack:
        deadline = time.monotonic() + timeout
        while reply is None and time.monotonic() < deadline:
            reply = next((r["body"] for r in list(fake.responses) if r["name"] == name), None)
            time.sleep(0.002)
    return response.status, ack, reply


def command_form(text: str, response_url: str = "") -> dict:
    return {
        "response_url": response_url,
        "command": "/kps-tasks",
        "text": text,
        "user_id": "U1",
        "channel_id": "C1",
        "team_id": "T000",
        "trigger_id": f"trigger-{next(_names)}",
    }


def action_form(payload: dict, response_url: str) -> dict:
    return {"payload": json.dumps({**payload, "response_url": response_url})}


def paging_payload(value, action_id: str = NEXT) -> dict:
    return {
        "type": "block_actions",
        "team": {"id": "T000"},
        "user": {"id": "U1"},
        "channel": {"id": "C1"},
        "trigger_id": f"trigger-{next(_names)}",
        "actions": [
            {"type": "button", "action_id": action_id, "block_id": "kps_tasks_paging", "value": value}
        ],
    }


# -- slash-command text -------------------------------------------------------------------------

words = st.one_of(
    st.sampled_from(
        [*MARKUP, "`", "```", "*", "_", "~", "&", "&amp;", "&lt;", "help", "status", "failed", "reset"]
        + ["replace", "unbind", "web", "\n", "\t", "\x00", "\u202e", "\ufeff", "|", "v2||0|"]
    ),
    st.text(max_size=12),
)
command_text = st.one_of(
    st.text(max_size=2000),
    st.lists(words, max_size=40).map(" ".join),
    st.lists(words, max_size=40).map("".join),
)


@settings(
    max_examples=COMMAND_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(text=command_text)
def test_any_command_text_gets_a_valid_escaped_answer(served, text):
    app, _, fake = served
    status, ack, reply = dispatch(app, fake, lambda url: command_form(text, url))
    assert status == 200
    answer = ack or reply
    assert isinstance(answer, dict), f"no answer to {text!r}"
    assert_valid_message(answer)
    assert_no_raw_markup(answer)


@pytest.mark.parametrize(
    "text",
    ["status <!channel>", "status t-<!here>`", "<!channel> `x`", "<@U123>", "help <!here>", "status"],
)
def test_hand_picked_texts_over_http(served_http, text):
    bot_url, sim, fake = served_http
    name = f"http{next(_names)}"
    form = command_form(text, fake.response_url(name))
    body = urlencode(form)
    response = requests.post(f"{bot_url}/slack/events", data=body, headers=signed_headers(body), timeout=10)
    assert response.status_code == 200
    answer = response.json() if response.content else None
    if answer is None:
        deadline = time.monotonic() + 10
        while answer is None and time.monotonic() < deadline:
            answer = next((r["body"] for r in list(fake.responses) if r["name"] == name), None)
            time.sleep(0.01)
    assert isinstance(answer, dict)
    assert_valid_message(answer)
    assert_no_raw_markup(answer)


def test_status_of_a_task_whose_id_is_markup_is_escaped_everywhere(served):
    """The status reply's fallback text carries the task ID from KPS: it must be escaped there too."""
    app, _, fake = served
    _, _, reply = dispatch(app, fake, lambda url: command_form("status t-<!here>`", url))
    assert "Running" in reply["text"]
    assert_valid_message(reply)
    assert_no_raw_markup(reply)


@pytest.fixture(scope="module")
def served_http(served):
    from kpsbot.services import HttpService
    from kpsbot.slack.server import make_wsgi_app

    app, sim, fake = served
    http = HttpService(make_wsgi_app(app, lambda: {"status": "ok"}), "127.0.0.1", 0)
    http.start()
    yield f"http://127.0.0.1:{http.port}", sim, fake
    http.stop(2)


# -- button values and block_actions payloads -----------------------------------------------------

button_values = st.one_of(
    st.text(max_size=300),
    st.binary(max_size=300).map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.tuples(
        st.sampled_from(["v1", "v9", ""]), st.sampled_from([PROJECT, "other", ""]), st.text(max_size=12)
    ).flatmap(lambda t: st.text(max_size=200).map(lambda rest: "|".join([*t, rest]))),
    st.none()
    | st.integers()
    | st.booleans()
    | st.lists(st.integers(), max_size=3)
    | st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


@settings(
    max_examples=BUTTON_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(value=button_values, action_id=st.sampled_from([PREV, NEXT, REFRESH]))
def test_any_button_value_gets_an_ephemeral_answer(served, value, action_id):
    app, _, fake = served
    status, ack, reply = dispatch(app, fake, lambda url: action_form(paging_payload(value, action_id), url))
    assert status == 200 and not ack
    assert isinstance(reply, dict), f"no answer to the button value {value!r}"
    assert_valid_message(reply)
    assert_no_raw_markup(reply)
    if reply.get("replace_original") is not True:  # not a page: then an ephemeral notice
        assert reply["response_type"] == "ephemeral" and reply["replace_original"] is False


def _without(payload: dict, *path: str) -> dict:
    payload = json.loads(json.dumps(payload))
    target = payload
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return payload


@pytest.mark.parametrize(
    "payload",
    [
        _without(paging_payload("v2||0|"), "actions"),
        {**paging_payload("v2||0|"), "actions": []},
        {**paging_payload("v2||0|"), "actions": [{}]},
        _without(paging_payload("v2||0|"), "user"),
        _without(paging_payload("v2||0|"), "channel"),
        {**paging_payload("v2||0|"), "user": "U1", "channel": ["C1"]},
        _without(paging_payload("v2||0|"), "actions", 0, "value"),
        _without(paging_payload("v2||0|"), "type"),
        _without(paging_payload("v2||0|"), "trigger_id"),
        {"type": "block_actions"},
        {},
    ],
    ids=lambda p: ",".join(sorted(p)) or "empty",
)
@pytest.mark.parametrize("with_response_url", [True, False])
def test_block_actions_with_fields_missing_never_get_a_500(served, served_http, payload, with_response_url):
    bot_url, sim, fake = served_http
    name = f"missing{next(_names)}"
    payload = dict(payload)
    payload.pop("response_url", None)
    if with_response_url:
        payload["response_url"] = fake.response_url(name)
    body = urlencode({"payload": json.dumps(payload)})
    response = requests.post(f"{bot_url}/slack/events", data=body, headers=signed_headers(body), timeout=10)
    assert response.status_code in (200, 404)  # 404: Bolt found no listener for it
    time.sleep(0.1)
    for reply in [r["body"] for r in list(fake.responses) if r["name"] == name]:
        assert_valid_message(reply)
    # The app still answers a normal request afterwards.
    assert dispatch(served[0], fake, lambda url: command_form("help", url))[0] == 200


# -- hostile KPS bodies through the watcher ---------------------------------------------------------


class ScriptedKps(HTTPAdapter):
    """A transport answering the KPS client from a script: (status, JSON body or raw bytes) per call kind."""

    def __init__(self) -> None:
        super().__init__()
        self.script: dict[str, object] = {}

    def send(self, request, **kwargs):  # noqa: ANN001 - requests' signature
        kind = "status" if "/tasks/" in request.path_url else request.path_url.split("/")[3].split("?")[0]
        answer = self.script.get(kind, (200, {"total": 0, "tasks": []}))
        status, body = answer(request) if callable(answer) else answer
        response = requests.Response()
        response.status_code = status
        response._content = body if isinstance(body, bytes) else json.dumps(body).encode()
        response.headers["Content-Type"] = "application/json"
        response.headers["X-Request-Id"] = "req-scripted"
        response.url = request.url
        response.request = request
        return response


class RecordingSender:
    """A Slack stand-in that checks each message against Slack's limits and records it."""

    channel = "C0BAD"

    def __init__(self) -> None:
        self.posted: list[dict] = []
        self.problems: list[str] = []

    def _check(self, message: dict) -> None:
        try:
            assert_valid_message(message)
            assert_no_raw_markup(message)
        except AssertionError as exc:  # the outbox would swallow it: keep it for the test
            self.problems.append(str(exc))

    def post(
        self, channel: str, message: dict, *, thread_ts: str | None = None, broadcast: bool = False
    ) -> str:
        self._check(message)
        self.posted.append(message)
        return f"{len(self.posted)}.000"

    def update(self, channel: str, ts: str, message: dict) -> None:
        self._check(message)
        self.posted.append(message)


def scripted_watcher():
    transport = ScriptedKps()
    kps = KpsClient("http://kps.invalid", PROJECT, AkSkAuth("AK", "SK", PROJECT), retries=0)
    kps.session.mount("http://", transport)
    sender = RecordingSender()
    store = Store(":memory:")
    project = WatchedProject(ProjectInfo(PROJECT, PROJECT, "test"), kps)
    outbox = Outbox(store, {"*": sender}, pacer=Pacer(0))
    watcher = Watcher([project], store, outbox, routes=[Route(RecordingSender.channel)], burst=5)
    return watcher, transport, sender, store


def page(*rows, total: int | None = None) -> tuple[int, dict]:
    return 200, {"total": len(rows) if total is None else total, "tasks": list(rows)}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)
hostile_rows = st.lists(
    json_values
    | st.fixed_dictionaries(
        {"task_id": st.text(max_size=12) | st.sampled_from(["dup", "dup", " dup ", "<!channel>"])},
        optional={
            name: json_values | st.sampled_from(MARKUP) | st.text(max_size=40)
            for name in ("operate_type", "task_time", "server_name", "server_id", "keypair_name")
        },
    ),
    max_size=12,
)
page_bodies = st.one_of(
    json_values.map(lambda body: (200, body)),
    st.tuples(hostile_rows, st.sampled_from([None, 0, 10**6, -1, "7", "x", None])).map(
        lambda t: (200, {"total": len(t[0]) if t[1] is None else t[1], "tasks": t[0]})
    ),
    st.sampled_from([(200, b"<html>502</html>"), (500, b""), (401, {"error_code": "<!channel>"})]),
)
status_bodies = st.one_of(
    json_values.map(lambda body: (200, body)),
    st.sampled_from(["SUCCESS_RESET", "FAILED_UNBIND", "RUNNING_RESET", "<!channel>", "", "SUCCESS"]).map(
        lambda s: (200, {"task_id": "known", "task_status": s, "server_id": "<@U1>"})
    ),
    st.sampled_from([(404, {}), (500, b"oops"), (200, b"not json")]),
)


@settings(max_examples=KPS_BODY_EXAMPLES, deadline=None)
@given(running=page_bodies, status=status_bodies, failed=page_bodies)
def test_any_kps_answer_leaves_the_watcher_working(running, status, failed):
    watcher, kps, sender, store = scripted_watcher()
    with store:
        known = {"task_id": "known", "operate_type": "RUNNING_RESET", "server_name": "web-01"}
        kps.script = {"running-tasks": page(known)}
        assert watcher.run_cycle().baseline
        kps.script = {"running-tasks": running, "status": status, "failed-tasks": failed}
        watcher.run_cycle()  # returns a report: a bad answer is a failed poll or skipped rows, not an error
        fresh = {"task_id": "fresh", "operate_type": "RUNNING_UNBIND", "server_name": "ok"}
        kps.script = {
            "running-tasks": page(fresh),
            "status": (200, {"task_id": "x", "task_status": "SUCCESS_RESET"}),
        }
        report = watcher.run_cycle()
        assert report.ok, report.summary()
        assert store.failed_deliveries() == 0 and store.pending_deliveries() == 0
        assert any("started on" in m["text"] and "ok" in m["text"] for m in sender.posted)
        assert sender.problems == []


def test_the_watcher_thread_survives_hostile_kps_answers_and_keeps_posting():
    watcher, kps, sender, store = scripted_watcher()
    loop = WatcherLoop(watcher, store, interval=0.01, owner="bad-input")
    huge = "<!channel>" + "x" * 100_000
    script = [
        page({"task_id": "base", "server_name": "web"}),
        page({"task_id": "big", "server_name": huge, "keypair_name": huge, "operate_type": huge}),
        page({"task_id": "big"}, {"task_id": "big"}, {"task_id": "dup"}, {"task_id": "dup"}, total=3),
        page(total=10**6),
        (200, {"total": None, "tasks": None}),
        (200, {"total": "many", "tasks": {"a": 1}}),
        (200, [1, 2, 3]),
        (200, b"\xff\xfe not json"),
        page(None, 7, "x", [], {"task_id": None}, {"task_id": 5, "task_time": {"ms": 1}}),
        (503, b"<html>down</html>"),
        page({"task_id": "after", "server_name": "still-working", "operate_type": "RUNNING_RESET"}),
    ]
    calls = {"n": 0}

    def running(request):
        step = min(calls["n"], len(script) - 1)
        calls["n"] += 1
        return script[step]

    kps.script = {"running-tasks": running, "status": (200, {"task_status": "SUCCESS_RESET"})}
    with store:
        loop.start()
        try:
            deadline = time.monotonic() + 20
            while not any("still-working" in m["text"] for m in sender.posted):
                assert loop.running, "the watcher thread died"
                assert time.monotonic() < deadline, "the watcher stopped posting"
                time.sleep(0.01)
            assert loop.running and loop.cycles >= len(script) - 1
        finally:
            loop.stop(5)
    assert sender.problems == []
    started = [m["text"] for m in sender.posted if "started on" in m["text"]]
    assert len(started) == len(set(started))  # duplicate IDs announced once
