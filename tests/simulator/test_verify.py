"""Request authentication, driven through kpsbot's own client and raw HTTP."""

from datetime import datetime, timedelta, timezone

import pytest
import requests
from simkit import AK, PROJECT, SK, TOKEN, make_client

from kpsbot.kps.auth import AkSkAuth, TokenAuth
from kpsbot.kps.client import KpsError
from kpsbot.simulator import Simulator, SimulatorServer

# -- auth ----------------------------------------------------------------------------------


def test_bad_signature_is_rejected(server):
    with pytest.raises(KpsError) as caught:
        make_client(server.url, AkSkAuth(AK, "not-the-secret", PROJECT)).list_running_tasks()
    assert caught.value.status == 401
    assert caught.value.error_code == "APIGW.0301"
    assert "signature" in caught.value.error_msg


def test_unknown_access_key_is_rejected(server):
    with pytest.raises(KpsError) as caught:
        make_client(server.url, AkSkAuth("OTHERAK", SK, PROJECT)).list_running_tasks()
    assert (caught.value.status, caught.value.error_code) == (401, "APIGW.0301")


def test_sdk_date_twenty_minutes_off_is_rejected(server):
    def late():
        return datetime.now(timezone.utc) - timedelta(minutes=20)

    with pytest.raises(KpsError) as caught:
        make_client(server.url, AkSkAuth(AK, SK, PROJECT, clock=late)).list_running_tasks()
    assert caught.value.status == 401
    assert "15 minutes" in caught.value.error_msg


def test_sdk_date_ten_minutes_off_is_accepted(server):
    def early():
        return datetime.now(timezone.utc) + timedelta(minutes=10)

    assert make_client(server.url, AkSkAuth(AK, SK, PROJECT, clock=early)).list_running_tasks().total == 0


def test_token_auth(sim, server):
    sim.add_task(task_id="t1")
    assert [
        t.task_id for t in make_client(server.url, TokenAuth(TOKEN, PROJECT)).list_running_tasks().tasks
    ] == ["t1"]
    with pytest.raises(KpsError) as caught:
        make_client(server.url, TokenAuth("expired-token", PROJECT)).list_running_tasks()
    assert caught.value.status == 401
    assert "expired" in str(caught.value)


def test_requests_without_credentials_or_with_a_foreign_project_are_rejected(server):
    response = requests.get(f"{server.url}/v3/{PROJECT}/running-tasks", timeout=5)
    assert response.status_code == 401
    assert response.json()["error_code"] == "APIGW.0301"
    foreign = requests.get(
        f"{server.url}/v3/{PROJECT}/running-tasks",
        auth=AkSkAuth(AK, SK),
        headers={"X-Project-Id": "other-project"},  # signed, but for another project
        timeout=5,
    )
    assert foreign.status_code == 401 and "X-Project-Id" in foreign.json()["error_msg"]


def test_no_auth_configured_accepts_anything():
    sim = Simulator(project_id=PROJECT)
    with SimulatorServer(sim) as server:
        response = requests.get(f"{server.url}/v3/{PROJECT}/running-tasks", timeout=5)
    assert response.status_code == 200
    assert response.json() == {"total": 0, "tasks": []}
