"""Several projects in several regions: IDs looked up in IAM by name (and kept in the database),
`kpsbot projects`, `kpsbot tasks`, `kpsbot watch --once` and `/healthz` of `kpsbot run` over them.

Real loopback servers throughout: one simulator server stands in for the account (every project, and
IAM, verifying signatures), reached per region as `http://127.0.0.1:PORT/{region}`; the fake Slack;
real SQLite files; the commands as subprocesses.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

import pytest
import requests
from requests.structures import CaseInsensitiveDict
from support.fake_slack import FakeSlack
from support.run_process import (
    clean_environment,
    free_port,
    run_kpsbot,
    stop_within,
    wait_healthy,
    wait_until,
)
from support.slack_requests import SECRET

from kpsbot.cli import MAX_IN_FLIGHT, Cloud
from kpsbot.kps.client import KpsError
from kpsbot.kps.iam import ProjectNotFound
from kpsbot.projects import ProjectDirectory
from kpsbot.settings import settings_from
from kpsbot.simulator import AuthFailure, Simulator, SimulatorServer, verify_request
from kpsbot.simulator import http as sim_http
from kpsbot.simulator.loopback import BackgroundHTTPServer, QuietHandler
from kpsbot.store import Store

AK, SK = "AKPROJTEST0001", "sk-proj-test-secret-0001"
NORTH, PROD = "cn-north-4", "ap-southeast-1_prod"
CHANNEL = "C0PROJECTS"


class Clock:
    """A monotonic clock the test moves: retry intervals pass without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def account():
    """Two projects in two regions, known to IAM by name only (their IDs are the simulator's own)."""
    sims = [Simulator(name=NORTH, ak=AK, sk=SK, seed=1), Simulator(name=PROD, ak=AK, sk=SK, seed=2)]
    with SimulatorServer(sims) as server:
        yield server


def north(server: SimulatorServer) -> Simulator:
    return next(s for s in server.sims if s.name == NORTH)


def prod(server: SimulatorServer) -> Simulator:
    return next(s for s in server.sims if s.name == PROD)


def kps_env(server: SimulatorServer, projects: str = f"{NORTH},{PROD}", **extra: str) -> dict:
    """Settings as a user writes them: project names, region templates, AK/SK."""
    return {
        "KPS_PROJECTS": projects,
        "KPS_ENDPOINT": f"{server.url}/{{region}}",
        "KPS_IAM_ENDPOINT": f"{server.url}/{{region}}",
        "CLOUD_SDK_AK": AK,
        "CLOUD_SDK_SK": SK,
        **extra,
    }


def directory(env: dict, store: Store | None, **options) -> ProjectDirectory:
    """The directory as the CLI builds it (Cloud's IAM clients), without retries so faults are exact."""
    settings = settings_from(env).require_kps()
    cloud = Cloud(settings, retries=0)
    return ProjectDirectory(settings.projects, store=store, iam=cloud.iam, **options)


def run_cli(args: list[str], cwd, env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return run_kpsbot(args, cwd, clean_environment(**env), timeout)


def reason_line(stderr: str) -> str:
    """The one-line reason a failed command ends with (log records may come before it)."""
    assert "Traceback" not in stderr
    reasons = [line for line in stderr.strip().splitlines() if line.startswith("kpsbot: ")]
    assert len(reasons) == 1 and stderr.strip().endswith(reasons[0]), stderr
    return reasons[0]


# -- ProjectDirectory ----------------------------------------------------------------------------------


def test_ids_are_looked_up_in_iam_in_configured_order_and_kept_in_the_store(account, tmp_path):
    with Store(tmp_path / "kpsbot.db") as store:
        found = directory(kps_env(account), store).resolve(strict=True)
        kept = store.known_projects()
    assert [(p.name, p.region, p.id, p.source) for p in found] == [
        (NORTH, "cn-north-4", north(account).project_id, "iam"),
        (PROD, "ap-southeast-1", prod(account).project_id, "iam"),
    ]
    assert account.iam_requests == 2
    assert {name: (k.region, k.id, k.source) for name, k in kept.items()} == {
        NORTH: ("cn-north-4", north(account).project_id, "iam"),
        PROD: ("ap-southeast-1", prod(account).project_id, "iam"),
    }


def test_a_second_directory_on_the_same_database_needs_no_iam(account, tmp_path):
    with Store(tmp_path / "kpsbot.db") as store:
        directory(kps_env(account), store).resolve(strict=True)
    account.iam_fail_next(100, status=503)  # IAM is down now: a restart must not need it
    before = account.iam_requests
    with Store(tmp_path / "kpsbot.db") as store:
        again = directory(kps_env(account), store)
        found = again.resolve(strict=True)
    assert [(p.name, p.id, p.source) for p in found] == [
        (NORTH, north(account).project_id, "database"),
        (PROD, prod(account).project_id, "database"),
    ]
    assert again.unresolved() == {}
    assert account.iam_requests == before


def test_an_id_in_the_setting_wins_over_iam_and_the_database(account, tmp_path):
    with Store(tmp_path / "kpsbot.db") as store:
        directory(kps_env(account), store).resolve(strict=True)  # both kept from IAM
        before = account.iam_requests
        env = kps_env(account, f"{NORTH}:0123456789abcdef,{PROD}")
        found = directory(env, store).resolve(strict=True)
    assert [(p.name, p.id, p.source) for p in found] == [
        (NORTH, "0123456789abcdef", "setting"),
        (PROD, prod(account).project_id, "database"),
    ]
    assert account.iam_requests == before


def test_an_id_in_the_setting_makes_no_iam_call(account):
    env = kps_env(account, f"{NORTH}:0123456789abcdef")
    env["KPS_IAM_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"  # would fail if it were asked
    found = directory(env, None).resolve(strict=True)
    assert [(p.name, p.id, p.source) for p in found] == [(NORTH, "0123456789abcdef", "setting")]
    assert account.iam_requests == 0


@pytest.mark.parametrize("strict", [True, False])
def test_a_name_iam_does_not_know_is_a_setting_error(account, strict):
    env = kps_env(account, f"{NORTH},cn-north-4_nosuch")
    with pytest.raises(ProjectNotFound) as caught:
        directory(env, None).resolve(strict=strict)
    assert caught.value.name == "cn-north-4_nosuch" and caught.value.found == 0
    assert "KPS_PROJECTS" in str(caught.value) and "'cn-north-4_nosuch'" in str(caught.value)


def test_a_name_iam_knows_twice_is_a_setting_error():
    twins = [Simulator(name=NORTH, ak=AK, sk=SK), Simulator(project_id="0c0d0e0f", name=NORTH, ak=AK, sk=SK)]
    with SimulatorServer(twins) as server:
        with pytest.raises(ProjectNotFound) as caught:
            directory(kps_env(server, NORTH), None).resolve(strict=True)
    assert caught.value.found == 2
    assert "KPS_PROJECTS" in str(caught.value) and f"2 projects named '{NORTH}'" in str(caught.value)
    assert f"{NORTH}:<project_id>" in str(caught.value)  # how to fix it


def test_iam_unreachable_raises_for_one_shot_commands(account):
    env = kps_env(account, NORTH, KPS_IAM_ENDPOINT=f"http://127.0.0.1:{free_port()}/{{region}}")
    with pytest.raises(KpsError) as caught:
        directory(env, None).resolve(strict=True)
    assert caught.value.error_code == "connection" and "cannot reach IAM" in str(caught.value)


def test_iam_unreachable_leaves_the_project_unresolved_until_refresh_finds_it(account, tmp_path):
    clock = Clock()
    account.iam_fail_next(100, status=503)
    with Store(tmp_path / "kpsbot.db") as store:
        env = kps_env(account, f"{NORTH}:0123456789abcdef,{PROD}")
        projects = directory(env, store, clock=clock, retry_seconds=30.0)
        found = projects.resolve()
        assert [p.name for p in found] == [NORTH]  # the one with its ID is served meanwhile
        assert list(projects.unresolved()) == [PROD]
        assert "IAM" in projects.unresolved()[PROD] and "503" in projects.unresolved()[PROD]
        assert projects.by_name(PROD) is None

        asked = account.iam_requests
        projects.refresh()  # the first retry is due at once
        assert account.iam_requests == asked + 1 and list(projects.unresolved()) == [PROD]
        asked = account.iam_requests
        projects.refresh()  # too soon: IAM is not asked again
        assert account.iam_requests == asked

        account.iam_clear_faults()  # IAM answers again
        clock.advance(30.0)
        found = projects.refresh()
        assert [(p.name, p.source) for p in found] == [(NORTH, "setting"), (PROD, "iam")]
        assert projects.unresolved() == {}
        assert store.known_projects()[PROD].id == prod(account).project_id
        asked = account.iam_requests
        projects.refresh()
        clock.advance(3600)
        projects.refresh()  # everything resolved: IAM is never asked again
        assert account.iam_requests == asked


def test_refresh_retries_sooner_after_a_first_failure_than_the_longest_interval(account):
    """IAM down for a moment while kpsbot starts must not leave a project unwatched for a minute:
    retries begin at `first_retry_seconds` and double up to `retry_seconds`."""
    clock = Clock()
    account.iam_fail_next(100, status=503)
    projects = directory(
        kps_env(account, PROD), None, clock=clock, retry_seconds=60.0, first_retry_seconds=1.0
    )
    projects.resolve()
    tried_at = []
    for _ in range(200):
        before = account.iam_requests
        projects.refresh()
        if account.iam_requests > before:
            tried_at.append(clock.now - 1000.0)
        clock.advance(1.0)
    assert tried_at == [0.0, 1.0, 3.0, 7.0, 15.0, 31.0, 63.0, 123.0, 183.0]  # gaps double, up to 60 s
    account.iam_clear_faults()
    clock.advance(100.0)
    assert [p.name for p in projects.refresh()] == [PROD]


def test_a_name_iam_stops_knowing_does_not_hold_back_the_other_projects(account):
    clock = Clock()
    account.iam_fail_next(100, status=503)
    projects = directory(kps_env(account, f"cn-north-4_gone,{PROD}"), None, clock=clock)
    assert projects.resolve() == []  # IAM down: nothing resolved, no error raised yet
    account.iam_clear_faults()
    found = projects.refresh()
    assert [p.name for p in found] == [PROD]
    unresolved = projects.unresolved()
    assert list(unresolved) == ["cn-north-4_gone"]
    assert (
        "KPS_PROJECTS" in unresolved["cn-north-4_gone"]
        and "no project named" in unresolved["cn-north-4_gone"]
    )


def test_the_iam_look_up_is_signed_with_the_security_token_of_temporary_credentials(account, monkeypatch):
    seen: list[tuple[str, dict]] = []
    serve_iam = sim_http.SimulatorHandler._iam

    def recording_iam(handler, match, body):
        seen.append((handler.path, CaseInsensitiveDict(handler.headers.items())))
        serve_iam(handler, match, body)

    monkeypatch.setattr(sim_http.SimulatorHandler, "_iam", recording_iam)
    env = kps_env(account, PROD, CLOUD_SDK_SECURITY_TOKEN="temporary-security-token-0001")
    [found] = directory(env, None).resolve(strict=True)
    assert (found.id, found.source) == (prod(account).project_id, "iam")  # the signature was accepted
    [(path, headers)] = seen
    assert path.startswith("/ap-southeast-1/v3/projects?name=")
    assert headers["X-Security-Token"] == "temporary-security-token-0001"
    assert "X-Project-Id" not in headers
    signed = headers["Authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    assert signed == ["host", "x-sdk-date", "x-security-token"]
    # The token is covered by the signature: the same request with another token does not verify.
    verify_request(account.credentials, "GET", path, headers, b"", account.clock())
    tampered = CaseInsensitiveDict(headers)
    tampered["X-Security-Token"] = "another-token"
    with pytest.raises(AuthFailure, match="signature"):
        verify_request(account.credentials, "GET", path, tampered, b"", account.clock())


# -- kpsbot projects ------------------------------------------------------------------------------------


def projects_json(result: subprocess.CompletedProcess) -> list[dict]:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["projects"]


def test_projects_json_lists_the_configured_projects_and_keeps_looked_up_ids(account, tmp_path):
    db = tmp_path / "kpsbot.db"
    Store(db).close()  # the bot's database, as `kpsbot run` or `kpsbot watch` made it
    env = kps_env(account, f"{PROD},cn-north-4_dev:0123456789abcdef,{NORTH}", KPSBOT_DB=str(db))
    first = projects_json(run_cli(["projects", "--json"], tmp_path, env))
    assert first == [
        {"name": PROD, "region": "ap-southeast-1", "id": prod(account).project_id, "source": "iam"},
        {"name": "cn-north-4_dev", "region": "cn-north-4", "id": "0123456789abcdef", "source": "setting"},
        {"name": NORTH, "region": "cn-north-4", "id": north(account).project_id, "source": "iam"},
    ]
    account.iam_fail_next(100, status=503)  # the second run must not need IAM
    second = projects_json(run_cli(["projects", "--json"], tmp_path, env))
    assert [p["source"] for p in second] == ["database", "setting", "database"]
    assert [p["id"] for p in second] == [p["id"] for p in first]
    with sqlite3.connect(db) as conn:
        rows = conn.execute("select name, region, id, source from projects order by name").fetchall()
    assert rows == [
        (PROD, "ap-southeast-1", prod(account).project_id, "iam"),
        (NORTH, "cn-north-4", north(account).project_id, "iam"),
    ]


def test_projects_table_shows_name_region_id_and_source(account, tmp_path):
    env = kps_env(account, f"{NORTH},cn-north-4_dev:0123456789abcdef")
    result = run_cli(["projects"], tmp_path, env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["NAME", "REGION", "ID", "SOURCE"]
    assert lines[1].split() == [NORTH, "cn-north-4", north(account).project_id, "iam"]
    assert lines[2].split() == ["cn-north-4_dev", "cn-north-4", "0123456789abcdef", "setting"]


def test_projects_without_a_database_file_creates_none_and_asks_iam_each_time(account, tmp_path):
    # A read-only command run from any directory does not leave a kpsbot.db behind: the IDs are kept
    # by the database the bot (`run`, `watch`) creates.
    env = kps_env(account)
    for _ in range(2):
        assert [p["source"] for p in projects_json(run_cli(["projects", "--json"], tmp_path, env))] == [
            "iam",
            "iam",
        ]
    assert not (tmp_path / "kpsbot.db").exists()
    assert account.iam_requests == 4


def test_projects_with_a_name_iam_does_not_know_exits_2_naming_it(account, tmp_path):
    result = run_cli(["projects", "--json"], tmp_path, kps_env(account, f"{NORTH},ap-southeast-1_nosuch"))
    assert result.returncode == 2
    line = reason_line(result.stderr)
    assert "KPS_PROJECTS" in line and "ap-southeast-1_nosuch" in line
    assert result.stdout == ""


def test_projects_with_iam_unreachable_exits_1_with_a_reason(account, tmp_path):
    env = kps_env(account, KPS_IAM_ENDPOINT=f"http://127.0.0.1:{free_port()}/{{region}}")
    result = run_cli(["projects"], tmp_path, env)
    assert result.returncode == 1
    line = reason_line(result.stderr)
    assert "IAM" in line and "cannot reach" in line
    assert SK not in result.stderr


def test_projects_with_an_iam_token_and_a_name_to_look_up_exits_2(account, tmp_path):
    env = {
        "KPS_PROJECTS": f"{NORTH}:0123456789abcdef,{PROD}",
        "KPS_ENDPOINT": f"{account.url}/{{region}}",
        "KPS_AUTH_TOKEN": "iam-token-secret-0001",
    }
    result = run_cli(["projects", "--json"], tmp_path, env)
    assert result.returncode == 2
    line = reason_line(result.stderr)
    assert "KPS_PROJECTS" in line and repr(PROD) in line and "KPS_AUTH_TOKEN" in line
    assert "iam-token-secret-0001" not in line
    assert account.iam_requests == 0


def test_a_project_name_iam_does_not_know_is_the_only_line_on_stderr(account, tmp_path):
    result = run_cli(["projects"], tmp_path, kps_env(account, f"{NORTH},ap-southeast-1_nosuch"))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_watch_with_a_name_iam_does_not_know_exits_2_too(account, tmp_path):
    env = kps_env(account, f"{NORTH},ap-southeast-1_nosuch", KPSBOT_DB=str(tmp_path / "kpsbot.db"))
    result = run_cli(["watch"], tmp_path, env, timeout=30)
    assert result.returncode == 2
    line = reason_line(result.stderr)
    assert "KPS_PROJECTS" in line and "ap-southeast-1_nosuch" in line


# -- kpsbot tasks ---------------------------------------------------------------------------------------


def add_tasks(sim: Simulator, count: int, prefix: str, start_ms: int = 1_790_000_000_000) -> list[dict]:
    """`count` tasks in `sim`, in the order KPS lists them (by task_time)."""
    return [
        sim.add_task(
            server_name=f"{prefix}-{i:02d}", task_id=f"{prefix}-task-{i:02d}", task_time_ms=start_ms + i
        )
        for i in range(count)
    ]


def test_tasks_over_two_projects_name_each_rows_project(account, tmp_path):
    add_tasks(north(account), 2, "north")
    add_tasks(prod(account), 1, "prod")
    result = run_cli(["tasks"], tmp_path, kps_env(account))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["PROJECT", "ACTION", "SERVER"]
    assert [line.split()[0] for line in lines[1:-1]] == [NORTH, NORTH, PROD]
    assert [line.split()[2] for line in lines[1:-1]] == ["north-00", "north-01", "prod-00"]
    assert lines[-1] == "showing 1-3 of 3"


def test_tasks_json_carries_project_and_project_id_and_total_is_the_sum(account, tmp_path):
    add_tasks(north(account), 3, "north")
    add_tasks(prod(account), 2, "prod")
    result = run_cli(["tasks", "--json"], tmp_path, kps_env(account))
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["total"] == 5
    assert [(t["project"], t["project_id"], t["server_name"]) for t in body["tasks"]] == [
        (NORTH, north(account).project_id, "north-00"),
        (NORTH, north(account).project_id, "north-01"),
        (NORTH, north(account).project_id, "north-02"),
        (PROD, prod(account).project_id, "prod-00"),
        (PROD, prod(account).project_id, "prod-01"),
    ]
    every = json.loads(run_cli(["tasks", "--all", "--json"], tmp_path, kps_env(account)).stdout)
    assert every["total"] == 5 and len(every["tasks"]) == 5


def test_tasks_project_option_limits_to_one_project(account, tmp_path):
    add_tasks(north(account), 3, "north")
    add_tasks(prod(account), 2, "prod")
    north_requests = north(account).requests
    result = run_cli(["tasks", "--project", PROD, "--json"], tmp_path, kps_env(account))
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["total"] == 2 and {t["project"] for t in body["tasks"]} == {PROD}
    assert north(account).requests == north_requests  # the other project is not even asked
    table = run_cli(["tasks", "--project", PROD], tmp_path, kps_env(account))
    assert table.stdout.splitlines()[0].split()[0] == "ACTION"  # one project: no PROJECT column


def test_tasks_with_an_unknown_project_exits_2(account, tmp_path):
    result = run_cli(["tasks", "--project", "cn-east-3"], tmp_path, kps_env(account))
    assert result.returncode == 2
    line = reason_line(result.stderr)
    assert "--project" in line and "cn-east-3" in line and NORTH in line and PROD in line
    assert north(account).requests == prod(account).requests == 0


@pytest.mark.parametrize(
    ("limit", "offset", "expected"),
    [
        ("5", "5", ["north-05", "north-06", "prod-00", "prod-01", "prod-02"]),
        ("5", "0", ["north-00", "north-01", "north-02", "north-03", "north-04"]),
        ("3", "7", ["prod-00", "prod-01", "prod-02"]),
        ("4", "10", ["prod-03", "prod-04"]),
        ("5", "12", []),
    ],
)
def test_tasks_limit_and_offset_page_across_projects(account, tmp_path, limit, offset, expected):
    add_tasks(north(account), 7, "north")
    add_tasks(prod(account), 5, "prod")
    result = run_cli(["tasks", "--limit", limit, "--offset", offset, "--json"], tmp_path, kps_env(account))
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["total"] == 12
    assert [t["server_name"] for t in body["tasks"]] == expected
    assert all(
        t["project"] == (NORTH if t["server_name"].startswith("north") else PROD) for t in body["tasks"]
    )


def test_tasks_with_one_project_failing_prints_the_other_and_exits_1(account, tmp_path):
    add_tasks(north(account), 2, "north")
    add_tasks(prod(account), 2, "prod")
    # Faults meet the project a request addresses; enough of them to outlast the client's retries.
    prod(account).fail_next(10, status=500)
    result = run_cli(["tasks"], tmp_path, kps_env(account))
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert [line.split()[2] for line in lines[1:-1]] == ["north-00", "north-01"]
    assert lines[-1] == "showing 1-2 of 2"
    line = reason_line(result.stderr)
    assert PROD in line and NORTH not in line
    assert "KPS.0001" in line and "request id" in line
    assert north(account).requests >= 1


# -- kpsbot watch --once ----------------------------------------------------------------------------------


@pytest.fixture
def slack():
    with FakeSlack(bot_token="xoxb-projects") as fake:
        yield fake


def watch_env(
    server: SimulatorServer, slack: FakeSlack, tmp_path, projects: str = f"{NORTH},{PROD}", **extra
):
    return kps_env(
        server,
        projects,
        SLACK_BOT_TOKEN="xoxb-projects",
        SLACK_API_URL=slack.url,
        KPSBOT_CHANNEL=CHANNEL,
        KPSBOT_DB=str(tmp_path / "kpsbot.db"),
        KPSBOT_PACE_SECONDS="0",
        KPSBOT_STUCK_MINUTES="0",
        **extra,
    )


def watch_once(env: dict, cwd) -> subprocess.CompletedProcess:
    return run_cli(["watch", "--once"], cwd, env)


def posted(slack: FakeSlack, since: int = 0) -> list[dict]:
    """The chat.postMessage args delivered after the first `since` ones."""
    return [c["args"] for c in slack.calls_to("chat.postMessage")][since:]


def test_watch_gives_each_project_its_own_baseline_then_posts_starts_naming_the_project(
    account, slack, tmp_path
):
    add_tasks(north(account), 2, "north-old")
    add_tasks(prod(account), 3, "prod-old")
    env = watch_env(account, slack, tmp_path)
    result = watch_once(env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"{NORTH}: baseline: 2 tasks running" in result.stdout
    assert f"{PROD}: baseline: 3 tasks running" in result.stdout
    baselines = sorted(m["text"] for m in posted(slack))
    assert baselines == [
        f"Watching project {PROD} in ap-southeast-1: 3 tasks already running",
        f"Watching project {NORTH} in cn-north-4: 2 tasks already running",
    ]
    north(account).add_task(server_name="north-new")
    prod(account).add_task(server_name="prod-new")
    result = watch_once(env, tmp_path)
    assert result.returncode == 0, result.stderr
    starts = sorted(m["text"] for m in posted(slack, 2))
    assert starts == [f"Reset started on north-new in {NORTH}", f"Reset started on prod-new in {PROD}"]
    assert all(m["channel"] == CHANNEL for m in posted(slack))
    assert watch_once(env, tmp_path).returncode == 0
    assert len(posted(slack)) == 4  # nothing twice


def test_one_project_failing_posts_one_outage_naming_it_while_the_other_keeps_posting(
    account, slack, tmp_path
):
    env = watch_env(account, slack, tmp_path, KPSBOT_OUTAGE_POLLS="2")
    assert watch_once(env, tmp_path).returncode == 0  # both baselines
    assert len(posted(slack)) == 2
    prod(account).fail_next(1000, kind="reset")  # ap-southeast-1_prod's KPS drops every connection
    news = []
    for poll in range(3):
        before = len(posted(slack))
        north(account).add_task(server_name=f"north-during-{poll}")
        result = watch_once(env, tmp_path)
        assert result.returncode == 1  # a project's poll failed
        assert f"{PROD}: poll failed: cannot reach KPS" in result.stdout
        assert f"{NORTH}: {poll + 1} tasks running, 1 started" in result.stdout
        news.append(sorted(m["text"] for m in posted(slack, before)))
    assert news[0] == [f"Reset started on north-during-0 in {NORTH}"]
    [outage, start] = news[1]
    assert outage.startswith(f"KPS API unreachable in {PROD}") and NORTH not in outage
    assert start == f"Reset started on north-during-1 in {NORTH}"
    assert news[2] == [f"Reset started on north-during-2 in {NORTH}"]  # the outage is told once
    prod(account).clear_faults()
    before = len(posted(slack))
    result = watch_once(env, tmp_path)
    assert result.returncode == 0, result.stderr
    [recovered] = [m["text"] for m in posted(slack, before)]
    assert recovered.startswith(f"KPS API reachable again in {PROD}")


def test_a_project_added_later_gets_a_baseline_of_its_own(account, slack, tmp_path):
    env = watch_env(account, slack, tmp_path, projects=NORTH)
    assert watch_once(env, tmp_path).returncode == 0
    assert [m["text"] for m in posted(slack)] == [
        f"Watching project {north(account).project_id} in cn-north-4: 0 tasks already running"
    ]
    add_tasks(prod(account), 3, "prod-existing")
    north(account).add_task(server_name="north-meanwhile")
    env = watch_env(account, slack, tmp_path)  # ap-southeast-1_prod added to KPS_PROJECTS
    result = watch_once(env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"{PROD}: baseline: 3 tasks running" in result.stdout
    assert f"{NORTH}: 1 tasks running, 1 started" in result.stdout
    assert sorted(m["text"] for m in posted(slack, 1)) == [
        f"Reset started on north-meanwhile in {NORTH}",
        f"Watching project {PROD} in ap-southeast-1: 3 tasks already running",
    ]
    prod(account).add_task(server_name="prod-new")
    assert watch_once(env, tmp_path).returncode == 0
    assert [m["text"] for m in posted(slack, 3)] == [f"Reset started on prod-new in {PROD}"]


def several_projects_news(account: SimulatorServer, slack: FakeSlack, tmp_path) -> list[tuple[str, dict]]:
    """Baselines, starts, finishes (a reply and an edit each), an outage and its end in two projects:
    every chat.postMessage and chat.update, in order."""
    env = watch_env(account, slack, tmp_path, KPSBOT_OUTAGE_POLLS="1")
    watch_once(env, tmp_path)
    north_task = north(account).add_task(server_name="north-web")
    prod_task = prod(account).add_task(server_name="prod-db")
    watch_once(env, tmp_path)
    north(account).finish_task(north_task["task_id"], success=True)
    prod(account).finish_task(prod_task["task_id"], success=False)
    assert watch_once(env, tmp_path).returncode == 0
    prod(account).fail_next(1000, kind="reset")
    watch_once(env, tmp_path)
    prod(account).clear_faults()
    watch_once(env, tmp_path)
    sent = [
        (c["method"], c["args"]) for c in slack.calls if c["method"] in ("chat.postMessage", "chat.update")
    ]
    kinds = [method for method, _ in sent]
    # 2 baselines, 2 starts, 2 finish replies, 1 outage, 1 recovery; 2 start messages edited
    assert (kinds.count("chat.postMessage"), kinds.count("chat.update")) == (8, 2)
    return sent


def names_one_project(args: dict) -> str | None:
    """The one project a message names in its text and blocks, else None."""
    shown = args["text"] + json.dumps(args.get("blocks", []))
    named = [name for name in (NORTH, PROD) if name in shown]
    return named[0] if len(named) == 1 and named[0] in args["text"] else None


def test_with_several_projects_every_channel_message_and_edit_names_its_project(account, slack, tmp_path):
    sent = several_projects_news(account, slack, tmp_path)
    in_channel = [(method, args) for method, args in sent if not args.get("thread_ts")]
    assert len(in_channel) == 8
    for method, args in in_channel:
        assert names_one_project(args), f"{method} does not name its project: {args['text']!r}"


def test_with_several_projects_finish_replies_in_threads_name_their_project_too(account, slack, tmp_path):
    replies = [args for _, args in several_projects_news(account, slack, tmp_path) if args.get("thread_ts")]
    assert len(replies) == 2
    for args in replies:
        assert names_one_project(args), f"the reply does not name its project: {args['text']!r}"


# -- /healthz of kpsbot run --------------------------------------------------------------------------------


def test_healthz_shows_each_project_and_one_iam_could_not_resolve_until_iam_is_back(account, slack, tmp_path):
    port = free_port()
    env = kps_env(
        account,
        f"{NORTH}:{north(account).project_id},{PROD}",
        SLACK_BOT_TOKEN="xoxb-projects",
        SLACK_SIGNING_SECRET=SECRET,
        SLACK_API_URL=slack.url,
        KPSBOT_DB=str(tmp_path / "kpsbot.db"),
        KPSBOT_POLL_SECONDS="1",
        PORT=str(port),
    )
    account.iam_fail_next(100_000, status=503)  # IAM is down while kpsbot starts
    base = {k: v for k, v in os.environ.items() if not k.startswith(("KPS", "SLACK", "CLOUD_SDK", "PORT"))}
    process = subprocess.Popen(
        [sys.executable, "-m", "kpsbot", "run", "--host", "127.0.0.1"],
        cwd=tmp_path,
        env={**base, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"

    def health() -> dict:
        return requests.get(f"{url}/healthz", timeout=5).json()

    try:
        wait_healthy(url, process, timeout=30)
        polled = wait_until(
            lambda: (h := health())["projects"][NORTH]["last_successful_poll"] and h,
            timeout=30,
            what="a poll",
        )
        assert polled["status"] == "ok"
        assert list(polled["projects"]) == [NORTH, PROD]
        assert polled["projects"][NORTH] == {
            "region": "cn-north-4",
            "id": north(account).project_id,
            "resolved": True,
            "last_successful_poll": polled["projects"][NORTH]["last_successful_poll"],
        }
        waiting = polled["projects"][PROD]
        assert (waiting["resolved"], waiting["id"], waiting["last_successful_poll"]) == (False, None, None)
        assert "IAM" in waiting["error"] and "503" in waiting["error"]
        assert process.poll() is None  # still serving
        assert prod(account).requests == 0

        account.iam_clear_faults()  # IAM is back: the project is looked up and watched
        back = wait_until(
            lambda: (h := health())["projects"][PROD]["last_successful_poll"] and h,
            timeout=30,
            what="IAM back",
        )
        assert back["projects"][PROD]["resolved"] is True
        assert back["projects"][PROD]["id"] == prod(account).project_id
        assert "error" not in back["projects"][PROD]
    finally:
        code, _ = stop_within(process, signal.SIGTERM)
    stderr = process.stderr.read()
    assert code == 0, stderr
    assert SK not in stderr and SECRET not in stderr


class InFlightKps(QuietHandler):
    """A KPS that takes 50 ms an answer and counts the requests it is answering at once. Every
    project has the tasks in `server.tasks`; each of them, asked for, has succeeded."""

    server: BackgroundHTTPServer

    def do_GET(self) -> None:  # noqa: N802 - BaseHTTPRequestHandler's name
        server = self.server
        with server.lock:  # type: ignore[attr-defined]
            server.now += 1  # type: ignore[attr-defined]
            server.most = max(server.most, server.now)  # type: ignore[attr-defined]
        try:
            time.sleep(0.05)
            path = urlsplit(self.path).path
            if path.endswith("/running-tasks"):
                tasks = server.tasks  # type: ignore[attr-defined]
                self.send_json(200, {"total": len(tasks), "tasks": tasks})
            elif path.endswith("/failed-tasks"):
                self.send_json(200, {"total": 0, "tasks": []})
            else:
                task_id = path.rsplit("/", 1)[1]
                self.send_json(200, {"task_id": task_id, "task_status": "SUCCESS_RESET", "server_id": "s"})
        finally:
            with server.lock:  # type: ignore[attr-defined]
                server.now -= 1  # type: ignore[attr-defined]


def test_at_most_eight_kps_requests_are_in_flight_over_every_project(tmp_path):
    server = BackgroundHTTPServer(("127.0.0.1", 0), InFlightKps)
    server.lock, server.now, server.most = threading.Lock(), 0, 0  # type: ignore[attr-defined]
    server.tasks = [  # type: ignore[attr-defined]
        {
            "task_id": f"t{n:02d}",
            "operate_type": "RUNNING_RESET",
            "task_time": "1790000000000",
            "server_name": f"web-{n:02d}",
            "server_id": "s",
            "keypair_name": "kp",
        }
        for n in range(20)
    ]
    server.start_background("in-flight-kps")
    try:
        projects = ",".join(f"{NORTH}_p{n:02d}:p{n:02d}" for n in range(12))
        env = {
            "KPS_PROJECTS": projects,
            "KPS_ENDPOINT": server.url,
            "KPS_AUTH_TOKEN": "token",
            "KPSBOT_DB": str(tmp_path / "k.db"),
            "KPSBOT_PACE_SECONDS": "0",
        }
        assert run_cli(["watch", "--once"], tmp_path, env).returncode == 0  # the baselines
        server.tasks, server.most = [], 0  # type: ignore[attr-defined]
        result = run_cli(["watch", "--once"], tmp_path, env)  # 240 finished: 240 status GETs
        assert result.returncode == 0, result.stderr
        assert result.stdout.count(": 0 tasks running, 0 started, 20 finished") == 12, result.stdout
    finally:
        server.stop_background()
    assert 4 <= server.most <= MAX_IN_FLIGHT == 8, server.most  # type: ignore[attr-defined]
