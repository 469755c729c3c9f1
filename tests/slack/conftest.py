"""The Slack app served for real on loopback, talking to the KPS simulator and a fake Slack."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from support.compose import compose_app
from support.fake_slack import FakeSlack
from support.slack_requests import SECRET, Bot

from kpsbot.services import HttpService
from kpsbot.settings import settings_from
from kpsbot.simulator import Simulator, SimulatorServer
from kpsbot.slack.home import HomeStatus
from kpsbot.slack.server import make_wsgi_app
from kpsbot.slack.workers import WorkerPool
from kpsbot.store import Store

BOT_TOKEN = "xoxb-test"
PROJECT = "p1"


@pytest.fixture
def fake():
    with FakeSlack() as slack:
        yield slack


def make_bot(
    fake: FakeSlack,
    sim_url: str,
    env: dict | None = None,
    kps_timeout: float = 6.0,
    home: Callable[[], HomeStatus] | None = None,
    db_path: str = ":memory:",
):
    """The Slack app as `kpsbot run` composes it (settings -> clients -> app), served on loopback;
    the one project p1 in cn-north-4 unless `env` gives KPS_PROJECTS."""
    project = {} if "KPS_PROJECTS" in (env or {}) else {"KPS_PROJECT_ID": PROJECT, "KPS_REGION": "cn-north-4"}
    settings = settings_from(
        {
            **project,
            "KPS_ENDPOINT": sim_url,
            "CLOUD_SDK_AK": "AK",
            "CLOUD_SDK_SK": "SK",
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_SIGNING_SECRET": SECRET,
            "SLACK_API_URL": fake.url,
            **(env or {}),
        }
    )
    store = Store(db_path)
    work = WorkerPool(workers=8)
    app = compose_app(settings, store, work, home=home, kps_timeout=kps_timeout)
    http = HttpService(make_wsgi_app(app, lambda: {"status": "ok", "version": "test"}), "127.0.0.1", 0)
    http.start()
    return http, work, store, settings


@pytest.fixture
def start_bot(fake):
    """start_bot(tasks=25, env={...}, kps_timeout=6.0, home=None, db_path=":memory:") -> Bot; everything
    is stopped after the test. `home` provides the Home tab's status (no Home tab without it); the Bot
    carries the store and settings the app was built with (`bot.store`, `bot.settings`)."""
    cleanup = []

    def start(
        tasks: int = 25,
        env: dict | None = None,
        kps_timeout: float = 6.0,
        home: Callable[[], HomeStatus] | None = None,
        db_path: str = ":memory:",
    ) -> Bot:
        sim = Simulator(project_id=PROJECT, ak="AK", sk="SK", tasks=tasks, seed=1, rate=0.0)
        server = SimulatorServer(sim)
        server.start()
        cleanup.append(server.stop)
        http, work, store, settings = make_bot(fake, server.url, env, kps_timeout, home, db_path)
        cleanup.append(store.close)
        cleanup.append(lambda: http.stop(2))
        cleanup.append(lambda: work.stop(2))
        return Bot(f"http://127.0.0.1:{http.port}", sim, fake, store=store, settings=settings)

    yield start
    for stop in reversed(cleanup):
        stop()
