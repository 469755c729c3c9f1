"""Several projects in several regions behind one simulator server, through kpsbot's own client."""

import hashlib

import pytest
import requests
from simkit import AK, SK, TOKEN, project_client

from kpsbot.kps.auth import AkSkAuth, TokenAuth
from kpsbot.kps.client import KpsClient, KpsError
from kpsbot.simulator import Simulator, SimulatorServer, derived_project_id, startup_line

# -- identity ----------------------------------------------------------------------------------


def test_a_project_given_by_name_gets_a_stable_id_and_its_region():
    north = Simulator(name="cn-north-4_dev")
    assert north.project_id == hashlib.sha256(b"kpsbot-sim:cn-north-4_dev").hexdigest()[:32]
    assert (
        north.project_id
        == Simulator(name="cn-north-4_dev").project_id
        == derived_project_id("cn-north-4_dev")
    )
    assert north.project_id != Simulator(name="cn-north-4").project_id
    assert (north.name, north.region) == ("cn-north-4_dev", "cn-north-4")


def test_a_project_given_by_id_is_named_by_it_and_has_no_region():
    sim = Simulator(project_id="0123abcd")
    assert (sim.project_id, sim.name, sim.region) == ("0123abcd", "0123abcd", None)
    assert Simulator().project_id == "p1"  # the one-project default of old
    explicit = Simulator(project_id="0a1b", name="ap-southeast-1_prod", region="ap-southeast-1")
    assert (explicit.project_id, explicit.region) == ("0a1b", "ap-southeast-1")


def test_projects_of_one_server_share_the_credentials_and_have_distinct_ids():
    with pytest.raises(ValueError, match="credentials"):
        SimulatorServer(
            [Simulator(name="cn-north-4", ak=AK, sk=SK), Simulator(name="cn-east-3", ak="AK2", sk=SK)]
        )
    with pytest.raises(ValueError, match="credentials"):
        SimulatorServer([Simulator(name="cn-north-4", token=TOKEN), Simulator(name="cn-east-3")])
    with pytest.raises(ValueError, match="0a1b"):
        SimulatorServer([Simulator(project_id="0a1b"), Simulator(project_id="0a1b", name="cn-north-4")])
    with pytest.raises(ValueError):
        SimulatorServer([])


# -- routing -------------------------------------------------------------------------------------


def test_each_project_answers_for_its_own_tasks_with_and_without_a_region_prefix(account, account_server):
    for sim in account:
        sim.add_task(task_id=f"{sim.name}-task")
    for sim in account:
        for url in (account_server.url, f"{account_server.url}/{sim.region}"):
            client = project_client(url, sim)
            assert [t.task_id for t in client.list_running_tasks().tasks] == [f"{sim.name}-task"]
            assert client.get_task_status(f"{sim.name}-task").task_status == "RUNNING_RESET"
    for sim in account:
        assert sim.requests == 4  # two calls, two base URLs: each counted by its own project
        assert {path for _, path in sim.request_log} == {
            f"{prefix}/v3/{sim.project_id}/{call}"
            for prefix in ("", f"/{sim.region}")
            for call in ("running-tasks", f"tasks/{sim.name}-task")
        }


def test_a_project_under_another_regions_prefix_is_404(account, account_server):
    north = account[0]
    for region in ("ap-southeast-1", "xx-nowhere-1"):
        with pytest.raises(KpsError) as caught:
            project_client(f"{account_server.url}/{region}", north).list_running_tasks()
        assert (caught.value.status, caught.value.error_code) == (404, "KPS.0004")
        assert region in caught.value.error_msg


def test_an_unknown_project_is_404_with_or_without_a_prefix(account_server):
    for url in (account_server.url, f"{account_server.url}/cn-north-4"):
        client = KpsClient(url, "no-such-project", AkSkAuth(AK, SK, "no-such-project"), backoff=0)
        with pytest.raises(KpsError) as caught:
            client.list_running_tasks()
        assert (caught.value.status, caught.value.error_code) == (404, "KPS.0004")
        assert "no-such-project" in caught.value.error_msg


def test_a_project_without_region_is_not_served_under_a_prefix():
    sim = Simulator(project_id="0123abcd", ak=AK, sk=SK)
    with SimulatorServer(sim) as server:
        assert project_client(server.url, sim).list_running_tasks().total == 0
        with pytest.raises(KpsError) as caught:
            project_client(f"{server.url}/cn-north-4", sim).list_running_tasks()
    assert (caught.value.status, caught.value.error_code) == (404, "KPS.0004")


def test_the_signature_covers_the_region_prefix(account, account_server):
    north = account[0]
    with requests.Session() as session:
        signed = session.prepare_request(
            requests.Request(
                "GET",
                f"{account_server.url}/v3/{north.project_id}/running-tasks",
                auth=AkSkAuth(AK, SK, north.project_id),
            )
        )
        signed.url = f"{account_server.url}/cn-north-4/v3/{north.project_id}/running-tasks"
        response = session.send(signed, timeout=5)
    assert response.status_code == 401
    assert response.json()["error_code"] == "APIGW.0301" and "signature" in response.json()["error_msg"]


def test_every_project_takes_the_shared_credentials_and_only_its_own_x_project_id(account, account_server):
    north, dev, _ = account
    assert KpsClient(
        account_server.url, dev.project_id, TokenAuth(TOKEN, dev.project_id)
    ).list_running_tasks()
    foreign = requests.get(
        f"{account_server.url}/v3/{north.project_id}/running-tasks",
        auth=AkSkAuth(AK, SK),
        headers={"X-Project-Id": dev.project_id},  # signed, but for the other project
        timeout=5,
    )
    assert foreign.status_code == 401 and foreign.json()["error_code"] == "APIGW.0301"
    assert "X-Project-Id" in foreign.json()["error_msg"]


def test_faults_stay_with_their_project(account, account_server):
    north, dev, _ = account
    north.fail_next(1, status=400)
    assert project_client(account_server.url, dev).list_running_tasks().total == 0
    with pytest.raises(KpsError) as caught:
        project_client(account_server.url, north).list_running_tasks()
    assert caught.value.status == 400


# -- control endpoints ----------------------------------------------------------------------------


def test_control_endpoints_take_a_project_selector(account, account_server):
    north, dev, prod = account
    base = f"{account_server.url}/_sim"
    listed = requests.get(f"{base}/projects", timeout=5).json()["projects"]
    assert [(p["name"], p["region"], p["id"], p["running"]) for p in listed] == [
        ("cn-north-4", "cn-north-4", north.project_id, 0),
        ("cn-north-4_dev", "cn-north-4", dev.project_id, 0),
        ("ap-southeast-1_prod", "ap-southeast-1", "0a1b", 0),
    ]

    added = requests.post(f"{base}/projects/0a1b/tasks", json={"task_id": "p1"}, timeout=5)
    assert added.status_code == 200 and added.json()["task_id"] == "p1"
    assert [t["task_id"] for t in prod.running()] == ["p1"] and north.running() == dev.running() == []
    finished = requests.post(f"{base}/projects/0a1b/tasks/p1/finish", json={"success": False}, timeout=5)
    assert finished.json() == {"task_id": "p1", "task_status": "FAILED_RESET"}
    state = requests.get(f"{base}/projects/0a1b/state", timeout=5).json()
    assert (state["running"], state["failed"]) == (0, 1)

    faults = requests.post(
        f"{base}/projects/{dev.project_id}/faults", json={"fail_next": 1, "status": 400}, timeout=5
    )
    assert faults.status_code == 200
    with pytest.raises(KpsError):
        project_client(account_server.url, dev).list_running_tasks()
    assert project_client(account_server.url, north).list_running_tasks().total == 0

    churn = requests.post(f"{base}/projects/{north.project_id}/churn", json={"count": 2}, timeout=5)
    assert churn.json() == {"finished": 0, "started": 2} and len(north.running()) == 2
    assert requests.post(f"{base}/projects/{north.project_id}/tick", timeout=5).status_code == 200

    unselected = requests.get(f"{base}/state", timeout=5)
    assert unselected.status_code == 400 and "/_sim/projects/{project_id}/state" in unselected.json()["error"]
    assert requests.get(f"{base}/projects/nope/state", timeout=5).status_code == 404
    assert requests.get(f"{base}/projects/0a1b/nothing", timeout=5).status_code == 404


def test_one_project_is_also_reachable_through_the_selector(sim, server):
    response = requests.post(
        f"{server.url}/_sim/projects/{sim.project_id}/tasks", json={"task_id": "s1"}, timeout=5
    )
    assert response.status_code == 200
    assert requests.get(f"{server.url}/_sim/state", timeout=5).json()["running"] == 1


# -- the start-up line -----------------------------------------------------------------------------


def test_startup_line_lists_projects_and_base_urls_without_secrets(account, account_server):
    line = startup_line(account_server)
    url = account_server.url
    assert line.startswith(f"KPS simulator listening on {url} with 3 projects: ")
    assert f"cn-north-4_dev (region cn-north-4, id {account[1].project_id}, 0 tasks)" in line
    assert "ap-southeast-1_prod (region ap-southeast-1, id 0a1b, 0 tasks)" in line
    assert line.endswith(f"set KPS_ENDPOINT={url}/{{region}} KPS_IAM_ENDPOINT={url}/{{region}}")
    for secret in (AK, SK, TOKEN):
        assert secret not in line


def test_startup_line_of_one_region_needs_no_region_in_the_url():
    with SimulatorServer([Simulator(name="cn-north-4"), Simulator(name="cn-north-4_dev")]) as server:
        line = startup_line(server)
    assert line.endswith(f"set KPS_ENDPOINT={server.url} KPS_IAM_ENDPOINT={server.url}")
