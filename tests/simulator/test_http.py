"""The simulator's KPS API and control endpoints over real HTTP, through kpsbot's own client and raw HTTP."""

import time

import pytest
import requests
from simkit import AK, PROJECT, SK, make_client

from kpsbot.kps.auth import AkSkAuth, TokenAuth
from kpsbot.kps.client import KpsError
from kpsbot.simulator import Simulator, SimulatorServer

# -- paging and the list endpoints ---------------------------------------------------------


def test_paging_returns_every_task_once():
    sim = Simulator(project_id=PROJECT, ak=AK, sk=SK, tasks=2345, seed=1)
    with SimulatorServer(sim) as server:
        page = make_client(server.url, AkSkAuth(AK, SK, PROJECT)).all_running_tasks()
    ids = [task.task_id for task in page.tasks]
    assert len(ids) == 2345 and len(set(ids)) == 2345
    assert sim.requests == 3  # 1000 + 1000 + 345
    assert {("GET", f"/v3/{PROJECT}/running-tasks")} == set(sim.request_log)


def test_running_list_is_ordered_by_time_then_id(sim, client):
    for task_id in ("b", "a", "c"):
        sim.add_task(task_id=task_id, task_time_ms=1_000)
    sim.add_task(task_id="0-early", task_time_ms=500)
    page = client.list_running_tasks(limit=2, offset=1)
    assert page.total == 4
    assert [t.task_id for t in page.tasks] == ["a", "b"]
    first = page.tasks[0]
    assert (first.operate_type, first.task_time, first.server_name, first.keypair_name) == (
        "RUNNING_RESET",
        "1000",
        "web-01",
        "kp",
    )


def test_hundred_thousand_tasks_serve_a_full_page():
    sim = Simulator(project_id=PROJECT, tasks=100_000, seed=5)
    with SimulatorServer(sim) as server:
        page = make_client(server.url, TokenAuth("unused")).list_running_tasks(limit=1000, offset=50_000)
    assert page.total == 100_000
    assert len(page.tasks) == 1000


def test_lifecycle_is_visible_over_http(sim, client):
    sim.add_task(task_id="t1", operate_type="RUNNING_UNBIND")
    sim.add_task(task_id="t2")
    sim.finish_task("t1", success=False, error_msg="boom")
    sim.hide_task("t2")
    assert client.list_running_tasks().total == 0
    assert client.get_task_status("t1").task_status == "FAILED_UNBIND"
    assert client.get_task_status("t2").task_status == "RUNNING_RESET"
    [failed] = client.list_failed_tasks().tasks
    assert (failed.task_id, failed.task_error_code, failed.task_error_msg) == ("t1", "KPS.2003", "boom")
    assert failed.action == "UNBIND"


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "limit, offset", [(0, 0), ("abc", 0), (1001, 0), (10, -1), (10, "x"), ("", 0)], ids=repr
)
def test_bad_paging_parameters_are_400(client, limit, offset):
    with pytest.raises(KpsError) as caught:
        client.list_running_tasks(limit=limit, offset=offset)
    assert caught.value.status == 400
    assert caught.value.error_code == "KPS.0005"


def test_unknown_task_project_and_path_are_404(server):
    client = make_client(server.url, AkSkAuth(AK, SK, PROJECT))
    with pytest.raises(KpsError) as caught:
        client.get_task_status("no-such-task")
    assert (caught.value.status, caught.value.error_code) == (404, "KPS.0004")

    signed = requests.Session()
    signed.auth = AkSkAuth(AK, SK, PROJECT)
    other = signed.get(f"{server.url}/v3/other-project/running-tasks", timeout=5)
    assert other.status_code == 404 and "other-project" in other.json()["error_msg"]
    nowhere = signed.get(f"{server.url}/v2/nothing", timeout=5)
    assert nowhere.status_code == 404 and nowhere.json()["error_code"] == "APIGW.0101"


def test_every_response_has_a_request_id_and_json_type(sim, server):
    sim.fail_next(1, status=503)
    urls = [f"/v3/{PROJECT}/running-tasks", f"/v3/{PROJECT}/running-tasks", f"/v3/{PROJECT}/tasks/x", "/"]
    ids = set()
    with requests.Session() as session:
        session.auth = AkSkAuth(AK, SK, PROJECT)
        statuses = []
        for url in urls:
            response = session.get(server.url + url, timeout=5)
            statuses.append(response.status_code)
            assert response.headers["Content-Type"] == "application/json"
            assert len(response.headers["X-Request-Id"]) == 32
            ids.add(response.headers["X-Request-Id"])
    assert statuses == [503, 200, 404, 404]
    assert len(ids) == len(urls)


# -- faults --------------------------------------------------------------------------------


def test_a_500_is_retried(sim, client):
    sim.add_task(task_id="t1")
    sim.fail_next(1, 500)
    assert [t.task_id for t in client.list_running_tasks().tasks] == ["t1"]
    assert sim.requests == 2


def test_non_json_body_under_200_is_an_error(sim, client):
    sim.fail_next(1, status=200, kind="nonjson")
    with pytest.raises(KpsError) as caught:
        client.list_running_tasks()
    assert "not JSON" in str(caught.value)


def test_html_502_page_is_an_error_after_retries(sim, client):
    sim.fail_next(4, kind="nonjson")
    with pytest.raises(KpsError) as caught:
        client.list_running_tasks()
    assert caught.value.status == 502
    assert "502 Bad Gateway" in str(caught.value)
    assert sim.requests == 4  # the first try and three retries


def test_custom_error_body(sim, client):
    sim.fail_next(1, status=400, body={"error_code": "KPS.9999", "error_msg": "made up"})
    with pytest.raises(KpsError) as caught:
        client.get_task_status("x")
    assert (caught.value.error_code, caught.value.error_msg) == ("KPS.9999", "made up")


def test_timeout_fault_leaves_the_request_unanswered_and_does_not_block_shutdown():
    sim = Simulator(project_id=PROJECT)
    server = SimulatorServer(sim)
    server.start()
    try:
        sim.fail_next(1, kind="timeout")
        with requests.Session() as session:
            with pytest.raises(requests.ReadTimeout):
                session.get(f"{server.url}/v3/{PROJECT}/running-tasks", timeout=(2.0, 0.5))
            assert session.get(
                f"{server.url}/v3/{PROJECT}/running-tasks", timeout=5
            ).ok  # the next is answered
    finally:
        started = time.monotonic()
        server.stop()
    assert time.monotonic() - started < 5


def test_timeout_fault_is_a_client_timeout(sim, server):
    sim.fail_next(1, kind="timeout")
    client = make_client(server.url, AkSkAuth(AK, SK, PROJECT), timeout=(2.0, 0.5))
    with pytest.raises(KpsError) as caught:
        client.list_running_tasks()
    assert caught.value.timed_out


def test_reset_fault_is_a_connection_error(sim, client):
    sim.fail_next(1, kind="reset")
    with pytest.raises(KpsError) as caught:
        client.list_running_tasks()
    assert caught.value.error_code == "connection"
    assert client.list_running_tasks().total == 0


def test_random_faults_are_reproducible():
    def outcomes():
        sim = Simulator(project_id=PROJECT, seed=3)
        sim.fault_ratio, sim.fault_kinds = 0.5, ("status",)
        with SimulatorServer(sim) as server, requests.Session() as session:
            return [
                session.get(f"{server.url}/v3/{PROJECT}/tasks/x", timeout=5).status_code for _ in range(20)
            ]

    first = outcomes()
    assert first == outcomes()
    assert 404 in first and any(code >= 500 for code in first)


def test_stopped_server_refuses_kept_alive_connections(sim):
    server = SimulatorServer(sim)
    server.start()
    client = make_client(server.url, AkSkAuth(AK, SK, PROJECT), retries=0)
    assert client.list_running_tasks().total == 0
    server.stop()
    with pytest.raises(KpsError) as caught:
        client.list_running_tasks()
    assert caught.value.error_code == "connection"


# -- control endpoints ---------------------------------------------------------------------


def test_control_endpoints(sim, server, client):
    base = f"{server.url}/_sim"
    added = requests.post(f"{base}/tasks", json={"task_id": "c1", "server_name": "gpu-01"}, timeout=5).json()
    assert added["task_id"] == "c1" and added["server_name"] == "gpu-01"
    assert requests.post(f"{base}/tasks", json={"nope": 1}, timeout=5).status_code == 400
    finish = requests.post(f"{base}/tasks/c1/finish", json={"success": False}, timeout=5)
    assert finish.json() == {"task_id": "c1", "task_status": "FAILED_RESET"}
    assert requests.post(f"{base}/tasks/missing/finish", json={}, timeout=5).status_code == 404

    faults = requests.post(f"{base}/faults", json={"fail_next": 1, "status": 503}, timeout=5)
    assert faults.status_code == 200
    assert client.list_failed_tasks().total == 1  # 503, retried
    assert sim.requests == 2

    state = requests.get(f"{base}/state", timeout=5).json()
    assert (state["running"], state["failed"]) == (0, 1)
    assert [t["kind"] for t in state["transitions"]] == ["started", "finished"]
    assert requests.post(f"{base}/tick", timeout=5).status_code == 200


# -- bounded memory ----------------------------------------------------------------------------


def test_request_log_keeps_the_newest_requests():
    sim = Simulator(project_id=PROJECT, request_log_size=3)
    with SimulatorServer(sim) as server, requests.Session() as session:
        for index in range(5):
            session.get(f"{server.url}/v3/{PROJECT}/tasks/t{index}", timeout=5)
    assert sim.requests == 5
    assert list(sim.request_log) == [("GET", f"/v3/{PROJECT}/tasks/t{index}") for index in (2, 3, 4)]


def test_a_forgotten_task_is_404_like_one_kps_never_knew():
    sim = Simulator(project_id=PROJECT, max_finished=1)
    for task_id in ("old", "new"):
        sim.add_task(task_id=task_id)
        sim.finish_task(task_id, success=False)
    with SimulatorServer(sim) as server:
        client = make_client(server.url, TokenAuth("unused"))
        assert client.get_task_status("new").task_status == "FAILED_RESET"
        with pytest.raises(KpsError) as caught:
            client.get_task_status("old")
        assert (caught.value.status, caught.value.error_code) == (404, "KPS.0004")
        assert [t.task_id for t in client.list_failed_tasks().tasks] == ["new"]
