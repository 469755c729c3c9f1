"""Fixtures for watcher tests: a KPS simulator and a fake Slack on loopback, a store in tmp_path."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import pytest
from slack_sdk import WebClient
from support.fake_slack import FakeSlack

from kpsbot.kps.auth import AkSkAuth
from kpsbot.kps.client import KpsClient
from kpsbot.simulator import Simulator, SimulatorServer
from kpsbot.slack.sender import SlackSender, slack_retry_handlers
from kpsbot.store import Store
from kpsbot.watch.cycle import WatchedProject, Watcher
from kpsbot.watch.outbox import Outbox, Pacer, Sender
from kpsbot.watch.plan import ProjectInfo, Route

CHANNEL = "C0NOTIFY"
PROJECT = ProjectInfo("p1", "p1", "cn-north-4")


class Clock:
    """A settable clock, so backoffs can be skipped without sleeping."""

    def __init__(self, now: float = 1_760_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def sim():
    simulator = Simulator(project_id="p1", ak="AK", sk="SK", tasks=0, seed=1, rate=0.0)
    with SimulatorServer(simulator) as server:
        simulator.url = server.url
        yield simulator


@pytest.fixture
def kps(sim):
    return KpsClient(sim.url, "p1", AkSkAuth("AK", "SK", "p1"), retries=0, backoff=0)


@pytest.fixture
def slack():
    with FakeSlack() as fake:
        yield fake


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "kpsbot.db"


def slack_sender(fake: FakeSlack) -> SlackSender:
    client = WebClient(
        token="xoxb-test",
        base_url=fake.url,
        retry_handlers=slack_retry_handlers(max_wait=2, sleep=lambda s: None, backoff=0),
    )
    return SlackSender(client)


def key(task: Mapping) -> tuple[str, str]:
    """A simulator task's identity in the store: (task_id, task_time)."""
    return task["task_id"], task["task_time"]


def build_watcher(
    kps: KpsClient,
    store: Store,
    *,
    senders: Mapping[str, Sender] | None = None,
    routes: Sequence[Route] = (),
    clock=None,
    project: ProjectInfo = PROJECT,
    fixed_channel: str | None = None,
    **options,
) -> Watcher:
    """A watcher of one project; an Outbox when there are senders (paced only if `pace` is given)."""
    pace = options.pop("pace", 0.0)
    options.setdefault("stuck_minutes", 0)
    clock = clock or time.time
    outbox = None
    if senders:
        outbox = Outbox(store, senders, fixed_channel=fixed_channel, clock=clock, pacer=Pacer(pace))
    return Watcher([WatchedProject(project, kps)], store, outbox, routes=routes, clock=clock, **options)


@pytest.fixture
def make_watcher(kps, slack, clock, db_path):
    """Builds a watcher (a new Store each call, like a new process) posting to the fake Slack."""
    stores = []

    def make(**options) -> Watcher:
        store = Store(db_path)
        stores.append(store)
        options.setdefault("burst", 5)
        options.setdefault("outage_polls", 3)
        return build_watcher(
            kps, store, senders={"*": slack_sender(slack)}, routes=[Route(CHANNEL)], clock=clock, **options
        )

    yield make
    for store in stores:
        store.close()
