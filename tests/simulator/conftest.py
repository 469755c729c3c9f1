"""Shared set-up for the simulator tests: one project with AK/SK and token auth, served on loopback."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from simkit import AK, PROJECT, SK, TOKEN, make_client  # noqa: E402

from kpsbot.kps.auth import AkSkAuth  # noqa: E402
from kpsbot.simulator import Simulator, SimulatorServer  # noqa: E402


@pytest.fixture
def sim():
    return Simulator(project_id=PROJECT, ak=AK, sk=SK, token=TOKEN, seed=7)


@pytest.fixture
def server(sim):
    with SimulatorServer(sim) as running:
        yield running


@pytest.fixture
def client(server):
    return make_client(server.url, AkSkAuth(AK, SK, PROJECT))


@pytest.fixture
def account():
    """Three projects of one account in two regions: two named only (derived IDs), one with its ID."""
    return [
        Simulator(name="cn-north-4", ak=AK, sk=SK, token=TOKEN, seed=1),
        Simulator(name="cn-north-4_dev", ak=AK, sk=SK, token=TOKEN, seed=2),
        Simulator(project_id="0a1b", name="ap-southeast-1_prod", ak=AK, sk=SK, token=TOKEN, seed=3),
    ]


@pytest.fixture
def account_server(account):
    with SimulatorServer(account) as running:
        yield running
