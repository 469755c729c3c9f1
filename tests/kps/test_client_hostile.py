"""The KPS client against hostile and broken responses: clear KpsError or a skipped row, never a crash."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kpsbot.kps.auth import AkSkAuth
from kpsbot.kps.client import KpsClient, KpsError
from kpsbot.simulator import Simulator, SimulatorServer

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def served():
    sim = Simulator(project_id="p1", ak="AK", sk="SK", seed=5)
    with SimulatorServer(sim) as server:
        yield (
            sim,
            KpsClient(server.url, "p1", AkSkAuth("AK", "SK", "p1"), retries=0, backoff=0, timeout=(2, 5)),
        )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=json_values)
def test_any_json_body_gives_a_page_or_a_kps_error(served, body):
    sim, client = served
    sim.fail_next(1, status=200, body=body)
    try:
        page = client.list_running_tasks(10, 0)
    except KpsError as exc:
        assert "wrong shape" in str(exc) or (isinstance(body, str) and "not JSON" in str(exc))
    else:
        assert isinstance(page.total, int) and page.total >= 0
        assert all(task.task_id for task in page.tasks)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        json_values
        | st.fixed_dictionaries(
            {"task_id": st.text(min_size=1, max_size=10)},
            optional={"task_time": json_values, "server_name": json_values},
        ),
        max_size=8,
    )
)
def test_bad_rows_are_skipped_not_fatal(served, rows):
    sim, client = served
    sim.fail_next(1, status=200, body={"total": len(rows), "tasks": rows})
    page = client.list_running_tasks(10, 0)
    assert len(page.tasks) + len(page.skipped) == len(rows)
    for task in page.tasks:
        assert isinstance(task.server_name, str) and task.task_id.strip()


def test_huge_server_name_and_nulls(served):
    sim, client = served
    rows = [{"task_id": "t1", "server_name": "x" * 100_000, "task_time": None, "keypair_name": None}]
    sim.fail_next(1, status=200, body={"total": 1, "tasks": rows})
    (task,) = client.list_running_tasks(10, 0).tasks
    assert len(task.server_name) == 100_000 and task.started_at is None and task.keypair_name == ""


def test_lying_total_with_empty_pages_stops(served):
    sim, client = served
    sim.fail_next(1, status=200, body={"total": 10**6, "tasks": []})
    page = client.all_running_tasks()
    assert page.tasks == [] and sim.requests >= 1


def test_duplicate_ids_across_pages_are_kept_once(served):
    sim, client = served
    first = {"total": 3, "tasks": [{"task_id": "a"}, {"task_id": "b"}]}
    second = {"total": 3, "tasks": [{"task_id": "b"}]}
    sim.fail_next(1, status=200, body=first)
    sim.fail_next(1, status=200, body=second)
    assert [t.task_id for t in client.all_running_tasks(page_size=2).tasks] == ["a", "b"]


def test_total_that_never_ends_is_capped(served, monkeypatch):
    import kpsbot.kps.client as client_module

    sim, client = served
    monkeypatch.setattr(client_module, "MAX_PAGES", 5)
    for i in range(5):
        sim.fail_next(1, status=200, body={"total": 10**9, "tasks": [{"task_id": f"t{i}"}]})
    page = client.all_running_tasks(page_size=1)
    assert len(page.tasks) == 5


@pytest.mark.parametrize(
    "status, body, expect",
    [
        (
            400,
            {"error_code": "KPS.0005", "error_msg": "Invalid limit"},
            ["KPS.0005", "Invalid limit", "HTTP 400"],
        ),
        (403, {"error_code": "APIGW.0302", "error_msg": "forbidden"}, ["APIGW.0302", "HTTP 403"]),
        (404, {"error_code": "KPS.0004", "error_msg": "not found"}, ["KPS.0004"]),
        (
            400,
            {"error": {"code": "APIG.1002", "message": "gateway says no"}},
            ["APIG.1002", "gateway says no"],
        ),
        (418, "<html>teapot</html>", ["HTTP 418", "teapot"]),
        (400, [1, 2, 3], ["HTTP 400"]),
    ],
)
def test_error_bodies_become_one_line_kps_errors(served, status, body, expect):
    sim, client = served
    sim.fail_next(1, status=status, body=body)
    with pytest.raises(KpsError) as caught:
        client.list_running_tasks()
    text = str(caught.value)
    assert "\n" not in text and "request id" in text
    for fragment in expect:
        assert fragment in text
    assert caught.value.status == status


def test_throttling_code_is_retried(served):
    sim, client = served
    sim.fail_next(1, status=400, body={"error_code": "APIG.0308", "error_msg": "throttled"})
    slept = []
    client._sleep = slept.append
    assert client.list_running_tasks(5, 0).total >= 0
    assert slept == [2.0]


def test_non_json_success_body(served):
    sim, client = served
    sim.fail_next(1, status=200, body="<html>maintenance</html>")
    with pytest.raises(KpsError, match="not JSON"):
        client.list_running_tasks()


def test_missing_total_pages_until_a_short_page(served):
    sim, client = served
    sim.fail_next(1, status=200, body={"tasks": [{"task_id": "a"}, {"task_id": "b"}]})
    sim.fail_next(1, status=200, body={"tasks": [{"task_id": "c"}]})
    page = client.all_running_tasks(page_size=2)
    assert [t.task_id for t in page.tasks] == ["a", "b", "c"]


def test_a_task_repeated_across_pages_is_listed_once(served):
    sim, client = served
    first = {"total": 3, "tasks": [{"task_id": "a"}, {"task_id": "b"}]}
    second = {"total": 3, "tasks": [{"task_id": "b"}, {"task_id": "c"}]}
    sim.fail_next(1, status=200, body=first)
    sim.fail_next(1, status=200, body=second)
    assert [t.task_id for t in client.all_running_tasks(page_size=2).tasks] == ["a", "b", "c"]
