"""The KPS simulator, driven through kpsbot's own client, the official Huawei SDK and raw HTTP."""

import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest
import requests

from kpsbot.kps.auth import AkSkAuth, TokenAuth
from kpsbot.kps.client import KpsClient, KpsError
from kpsbot.simulator import Simulator, SimulatorServer

AK, SK, TOKEN, PROJECT = "AKSIMTEST", "sk-sim-secret", "tok-sim-secret", "proj1"


def make_client(url, auth, **kwargs):
    kwargs.setdefault("backoff", 0)
    return KpsClient(url, PROJECT, auth, **kwargs)


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


def test_same_seed_gives_the_same_tasks():
    def snapshot():
        return Simulator(tasks=20, seed=42, clock=lambda: 1_700_000_000.0).running()

    first = snapshot()
    assert first == snapshot()
    assert all(t["operate_type"] in ("RUNNING_RESET", "RUNNING_REPLACE", "RUNNING_UNBIND") for t in first)
    assert all(t["task_time"].isdigit() and len(t["task_time"]) == 13 for t in first)


def test_hundred_thousand_tasks_serve_a_full_page():
    sim = Simulator(project_id=PROJECT, tasks=100_000, seed=5)
    with SimulatorServer(sim) as server:
        page = make_client(server.url, TokenAuth("unused")).list_running_tasks(limit=1000, offset=50_000)
    assert page.total == 100_000
    assert len(page.tasks) == 1000


# -- auth ---------------------------------------------------------------------------------


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
    with pytest.raises(KpsError) as caught:
        KpsClient(server.url, PROJECT, AkSkAuth(AK, SK, "other-project")).list_running_tasks()
    assert caught.value.status == 401


def test_no_auth_configured_accepts_anything():
    sim = Simulator(project_id=PROJECT)
    with SimulatorServer(sim) as server:
        response = requests.get(f"{server.url}/v3/{PROJECT}/running-tasks", timeout=5)
    assert response.status_code == 200
    assert response.json() == {"total": 0, "tasks": []}


# -- errors -------------------------------------------------------------------------------


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


# -- faults -------------------------------------------------------------------------------


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


# -- lifecycle ----------------------------------------------------------------------------


def test_add_finish_hide_remove(sim):
    ok = sim.add_task(operate_type="RUNNING_REPLACE", task_id="ok")
    bad = sim.add_task(operate_type="RUNNING_UNBIND", task_id="bad", server_name="db-02")
    hidden = sim.add_task(task_id="hidden")
    gone = sim.add_task(task_id="gone")
    assert ok["operate_type"] == "RUNNING_REPLACE" and bad["server_name"] == "db-02"
    assert sim.status("ok") == "RUNNING_REPLACE"

    assert sim.finish_task("ok") == "SUCCESS_REPLACE"
    sim.finish_task("bad", success=False, error_code="KPS.2003", error_msg="server is not running")
    sim.hide_task("hidden")
    sim.remove_task("gone")

    assert [t["task_id"] for t in sim.running()] == []
    assert sim.status("ok") == "SUCCESS_REPLACE"
    assert sim.status("bad") == "FAILED_UNBIND"
    assert sim.status("hidden") == hidden["operate_type"] == "RUNNING_RESET"
    assert sim.status(gone["task_id"]) is None
    [failed] = sim.failed()
    assert failed["task_id"] == "bad"
    assert failed["task_error_code"] == "KPS.2003"
    assert failed["task_error_msg"] == "server is not running"
    assert failed["server_name"] == "db-02"

    kinds = [(t["kind"], t["task_id"], t["outcome"]) for t in sim.transitions()]
    assert kinds == [
        ("started", "ok", None),
        ("started", "bad", None),
        ("started", "hidden", None),
        ("started", "gone", None),
        ("finished", "ok", "succeeded"),
        ("finished", "bad", "failed"),
    ]
    with pytest.raises(KeyError):
        sim.finish_task("ok")
    with pytest.raises(ValueError):
        sim.add_task(task_id="ok")


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


def test_rate_starts_and_finishes_tasks_on_the_clock():
    now = [1_000.0]
    sim = Simulator(rate=2.0, finish_after=(1.0, 1.0), fail_ratio=1.0, seed=9, clock=lambda: now[0])
    sim.tick(1_001.0)
    assert len(sim.running()) == 2  # started at 1000.5 and 1001.0
    assert [t["task_time"] for t in sim.running()] == ["1000500", "1001000"]
    sim.tick(1_002.0)
    assert len(sim.running()) == 2  # two more started, the first two finished
    finished = [t for t in sim.transitions() if t["kind"] == "finished"]
    assert [(t["outcome"], t["at"]) for t in finished] == [("failed", 1_001.5), ("failed", 1_002.0)]
    assert {t["task_id"] for t in sim.failed()} == {t["task_id"] for t in finished}
    assert all(sim.status(t["task_id"]).startswith("FAILED_") for t in finished)


def test_static_snapshot_never_finishes_by_itself():
    sim = Simulator(tasks=5, seed=1)
    sim.tick(time.time() + 10 * 86_400)
    assert len(sim.running()) == 5
    assert sim.transitions() == []


def test_initial_tasks_finish_when_the_simulator_is_live():
    sim = Simulator(tasks=3, seed=1, rate=0.001, finish_after=(5, 10), fail_ratio=0.0, clock=lambda: 0.0)
    sim.tick(11.0)
    assert sim.running() == []
    assert [t["outcome"] for t in sim.transitions()] == ["succeeded"] * 3


def test_finish_in_schedules_an_explicit_task():
    now = [50.0]
    sim = Simulator(clock=lambda: now[0], fail_ratio=0.0, seed=2)
    sim.add_task(task_id="soon", finish_in=2.0)
    now[0] = 52.0
    assert sim.status("soon") == "RUNNING_RESET"
    sim.tick()
    assert sim.status("soon") == "SUCCESS_RESET"


# -- control endpoints and serve ------------------------------------------------------------


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


def test_serve_prints_one_line_without_secrets_and_stops_on_sigterm():
    code = (
        "from kpsbot.simulator import Simulator, serve\n"
        f"sim = Simulator(project_id='{PROJECT}', ak='{AK}', sk='{SK}', token='{TOKEN}', tasks=4)\n"
        "serve('127.0.0.1', 0, sim)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        url = line.split()[4]
        assert line == f"KPS simulator listening on {url} (project {PROJECT}, 4 tasks)"
        page = make_client(url, AkSkAuth(AK, SK, PROJECT)).list_running_tasks()
        assert page.total == 4
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        rest = proc.stdout.read()
    finally:
        proc.kill()
        proc.stdout.close()
    for secret in (AK, SK, TOKEN):
        assert secret not in line + rest


# -- the official Huawei Cloud SDK ------------------------------------------------------------


def test_official_sdk_can_call_the_simulator(sim, server):
    from huaweicloudsdkcore.auth.credentials import BasicCredentials
    from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
    from huaweicloudsdkcore.http.http_config import HttpConfig
    from huaweicloudsdkkps.v3 import (
        KpsClient as SdkKpsClient,
    )
    from huaweicloudsdkkps.v3 import (
        ListFailedTaskRequest,
        ListKeypairTaskRequest,
        ListRunningTaskRequest,
    )

    for index in range(5):
        sim.add_task(task_id=f"t{index}", task_time_ms=1_000 + index)
    sim.finish_task("t0", success=False, error_code="KPS.2003", error_msg="server is not running")

    config = HttpConfig.get_default_config()
    config.ignore_ssl_verification = True
    sdk = (
        SdkKpsClient.new_builder()
        .with_http_config(config)
        .with_credentials(BasicCredentials(AK, SK, PROJECT))
        .with_endpoints([server.url])
        .build()
    )

    running = sdk.list_running_task(ListRunningTaskRequest(limit=2, offset=1))
    assert running.total == 4
    assert [t.task_id for t in running.tasks] == ["t2", "t3"]
    assert running.tasks[0].operate_type == "RUNNING_RESET"

    failed = sdk.list_failed_task(ListFailedTaskRequest())
    assert [(t.task_id, t.task_error_code) for t in failed.tasks] == [("t0", "KPS.2003")]

    status = sdk.list_keypair_task(ListKeypairTaskRequest(task_id="t0"))
    assert (status.task_id, status.task_status) == ("t0", "FAILED_RESET")

    bad = (
        SdkKpsClient.new_builder()
        .with_http_config(config)
        .with_credentials(BasicCredentials(AK, "wrong-secret", PROJECT))
        .with_endpoints([server.url])
        .build()
    )
    with pytest.raises(ClientRequestException) as caught:
        bad.list_running_task(ListRunningTaskRequest())
    assert (caught.value.status_code, caught.value.error_code) == (401, "APIGW.0301")


def test_churn_finishes_and_starts_the_same_number():
    sim = Simulator(project_id="p1", tasks=50, seed=9)
    before = {t["task_id"] for t in sim.running()}
    assert sim.churn(10) == {"finished": 10, "started": 10}
    after = {t["task_id"] for t in sim.running()}
    assert len(after) == 50 and len(before - after) == 10 and len(after - before) == 10
    kinds = [t["kind"] for t in sim.transitions()]
    assert kinds.count("finished") == 10 and kinds.count("started") == 10
