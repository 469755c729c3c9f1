"""Fixtures for watcher tests: a KPS simulator and a fake Slack on loopback, a store in tmp_path."""

from __future__ import annotations

import pytest
from slack_sdk import WebClient
from support.fake_slack import FakeSlack

from kpsbot.kps.auth import AkSkAuth
from kpsbot.kps.client import KpsClient
from kpsbot.simulator import Simulator, SimulatorServer
from kpsbot.store import Store
from kpsbot.watch.cycle import Watcher
from kpsbot.watch.delivery import SlackSender, slack_retry_handlers

CHANNEL = "C0NOTIFY"


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


def slack_sender(fake: FakeSlack, channel: str = CHANNEL) -> SlackSender:
    client = WebClient(
        token="xoxb-test",
        base_url=fake.url,
        retry_handlers=slack_retry_handlers(max_wait=2, sleep=lambda s: None, backoff=0),
    )
    return SlackSender(client, channel)


@pytest.fixture
def make_watcher(kps, slack, clock, db_path):
    """Builds a watcher (a new Store each call, like a new process) posting to the fake Slack."""
    stores = []

    def make(**options) -> Watcher:
        store = Store(db_path)
        stores.append(store)
        options.setdefault("burst", 5)
        options.setdefault("outage_polls", 3)
        return Watcher(
            kps, store, slack_sender(slack), project_id="p1", location="cn-north-4", clock=clock, **options
        )

    yield make
    for store in stores:
        store.close()
