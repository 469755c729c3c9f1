"""IAM's project look-up (`GET /v3/projects?name=`) as the simulator answers it, over real HTTP."""

import pytest
import requests
from simkit import AK, SK, TOKEN, IamAuth

from kpsbot.kps.auth import AkSkAuth
from kpsbot.simulator import Simulator, SimulatorServer
from kpsbot.simulator.http import DOMAIN_ID


def look_up(url, name=None, auth=None, headers=None, prefix=""):
    params = {} if name is None else {"name": name}
    return requests.get(
        f"{url}{prefix}/v3/projects", params=params, auth=auth or IamAuth(), headers=headers, timeout=5
    )


def test_a_signed_look_up_without_x_project_id_finds_the_project(account, account_server):
    dev = account[1]
    response = look_up(account_server.url, "cn-north-4_dev")
    assert "X-Project-Id" not in response.request.headers
    assert response.status_code == 200
    assert len(response.headers["X-Request-Id"]) == 32
    body = response.json()
    assert body["projects"] == [
        {
            "id": dev.project_id,
            "name": "cn-north-4_dev",
            "domain_id": DOMAIN_ID,
            "enabled": True,
            "description": "",
            "is_domain": False,
            "parent_id": account[0].project_id,  # a sub-project's parent is its region's project
            "links": {"self": f"{account_server.url}/v3/projects/{dev.project_id}"},
        }
    ]
    assert body["links"] == {
        "self": f"{account_server.url}/v3/projects?name=cn-north-4_dev",
        "previous": None,
        "next": None,
    }


def test_a_regions_own_project_has_the_account_as_its_parent(account, account_server):
    [north] = look_up(account_server.url, "cn-north-4").json()["projects"]
    assert (north["id"], north["parent_id"]) == (account[0].project_id, DOMAIN_ID)


def test_a_look_up_signed_with_an_x_project_id_is_accepted_too(account, account_server):
    response = look_up(account_server.url, "ap-southeast-1_prod", auth=AkSkAuth(AK, SK, "any-project"))
    assert response.status_code == 200
    assert [p["id"] for p in response.json()["projects"]] == ["0a1b"]


def test_a_look_up_under_a_region_prefix_sees_the_whole_account(account_server):
    response = look_up(account_server.url, "ap-southeast-1_prod", prefix="/cn-north-4")
    assert response.status_code == 200
    assert [p["name"] for p in response.json()["projects"]] == ["ap-southeast-1_prod"]
    assert (
        response.json()["projects"][0]["links"]["self"] == f"{account_server.url}/cn-north-4/v3/projects/0a1b"
    )
    nowhere = look_up(account_server.url, "cn-north-4", prefix="/xx-nowhere-1")
    assert nowhere.status_code == 404 and nowhere.json()["error_code"] == "APIGW.0101"


def test_an_unknown_name_is_an_empty_list_and_no_name_lists_every_project(account, account_server):
    assert look_up(account_server.url, "cn-east-3").json()["projects"] == []
    every = look_up(account_server.url).json()["projects"]
    assert [p["id"] for p in every] == [sim.project_id for sim in account]


def test_a_name_iam_knows_twice_is_listed_twice():
    twins = [
        Simulator(name="cn-north-4", ak=AK, sk=SK),
        Simulator(project_id="0c0d", name="cn-north-4", ak=AK, sk=SK),
    ]
    with SimulatorServer(twins) as server:
        projects = look_up(server.url, "cn-north-4").json()["projects"]
    assert sorted(p["id"] for p in projects) == sorted(sim.project_id for sim in twins)


def test_token_auth(account_server):
    ok = look_up(account_server.url, "cn-north-4", headers={"X-Auth-Token": TOKEN}, auth=lambda r: r)
    assert ok.status_code == 200 and len(ok.json()["projects"]) == 1
    bad = look_up(account_server.url, "cn-north-4", headers={"X-Auth-Token": "expired"}, auth=lambda r: r)
    assert bad.status_code == 401 and bad.json()["error_code"] == "APIGW.0301"


def test_a_bad_signature_or_no_credentials_is_401(account_server):
    for auth in (IamAuth(AK, "not-the-secret"), IamAuth("OTHERAK", SK), lambda r: r):
        response = look_up(account_server.url, "cn-north-4", auth=auth)
        assert response.status_code == 401
        assert response.json()["error_code"] == "APIGW.0301"
        assert response.headers["X-Request-Id"]
    assert (
        look_up(account_server.url, "cn-north-4", auth=IamAuth(AK, "wrong"))
        .json()["error_msg"]
        .endswith("the signature does not match")
    )


def test_iam_faults_fail_iam_only_and_are_not_kps_requests(account, account_server):
    account_server.iam_fail_next(2, status=503)
    assert [look_up(account_server.url, "cn-north-4").status_code for _ in range(3)] == [503, 503, 200]
    account_server.iam_fail_next(1, kind="reset")
    with pytest.raises(requests.ConnectionError):
        look_up(account_server.url, "cn-north-4")
    assert account_server.iam_requests == 4
    assert [sim.requests for sim in account] == [0, 0, 0]

    control = requests.post(
        f"{account_server.url}/_sim/iam/faults", json={"fail_next": 1, "status": 500}, timeout=5
    )
    assert control.json() == {"requests": 4, "pending_faults": 1}
    failed = look_up(account_server.url, "cn-north-4")
    assert failed.status_code == 500 and failed.headers["X-Request-Id"]
    account_server.iam_fail_next(3)
    cleared = requests.post(f"{account_server.url}/_sim/iam/faults", json={"clear": True}, timeout=5)
    assert cleared.json()["pending_faults"] == 0
    assert look_up(account_server.url, "cn-north-4").status_code == 200


def test_a_timeout_fault_holds_the_answer_back(account_server):
    account_server.iam_timeout_seconds = 1.0
    account_server.iam_fail_next(1, kind="timeout")
    with pytest.raises(requests.ReadTimeout):
        requests.get(f"{account_server.url}/v3/projects", auth=IamAuth(), timeout=(2.0, 0.3))
