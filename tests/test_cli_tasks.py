"""`kpsbot tasks` as a real subprocess against the simulator on loopback."""

import json

import pytest
from support.run_process import clean_environment, run_kpsbot

from kpsbot.simulator import Simulator, SimulatorServer

AK, SK, PROJECT = "AKCLITEST0001", "sk-cli-test-secret-0001", "projcli"


@pytest.fixture
def sim():
    simulator = Simulator(project_id=PROJECT, ak=AK, sk=SK, token="tok-cli-secret", tasks=0, seed=3)
    with SimulatorServer(simulator) as server:
        simulator.url = server.url
        yield simulator


def run_cli(args, tmp_path, env=None, timeout=60):
    return run_kpsbot(args, tmp_path, clean_environment(**(env or {})), timeout)


def kps_env(sim, **extra):
    return {
        "KPS_ENDPOINT": sim.url,
        "KPS_PROJECT_ID": PROJECT,
        "CLOUD_SDK_AK": AK,
        "CLOUD_SDK_SK": SK,
        **extra,
    }


def test_all_json_returns_every_unique_task(sim, tmp_path):
    for i in range(2345):
        sim.add_task(server_name=f"web-{i:04d}")
    result = run_cli(["tasks", "--all", "--json"], tmp_path, kps_env(sim))
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    ids = [t["task_id"] for t in body["tasks"]]
    assert body["total"] == 2345 and len(set(ids)) == 2345
    assert set(body["tasks"][0]) == {
        "task_id",
        "operate_type",
        "task_time",
        "server_name",
        "server_id",
        "keypair_name",
        "project",
        "project_id",
    }
    assert {(t["project"], t["project_id"]) for t in body["tasks"]} == {(PROJECT, PROJECT)}


def test_table_shows_page_and_total(sim, tmp_path):
    for i in range(12):
        sim.add_task(operate_type="RUNNING_REPLACE", server_name=f"db-{i:02d}", keypair_name="kp-ops")
    result = run_cli(["tasks", "--limit", "5", "--offset", "5"], tmp_path, kps_env(sim))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["ACTION", "SERVER", "NAME"]
    assert len(lines) == 1 + 5 + 1
    assert "Replace" in lines[1] and "kp-ops" in lines[1]
    assert lines[-1] == "showing 6-10 of 12"


def test_token_auth_and_empty_list(sim, tmp_path):
    env = {"KPS_ENDPOINT": sim.url, "KPS_PROJECT_ID": PROJECT, "KPS_AUTH_TOKEN": "tok-cli-secret"}
    result = run_cli(["tasks"], tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "No running tasks."


def test_api_error_exit_1_with_code_and_request_id(sim, tmp_path):
    sim.fail_next(1, status=400, body={"error_code": "KPS.0005", "error_msg": "Invalid offset"})
    result = run_cli(["tasks"], tmp_path, kps_env(sim))
    assert result.returncode == 1
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1
    assert "KPS.0005" in line and "Invalid offset" in line and "request id" in line
    assert "Traceback" not in result.stderr


def test_wrong_secret_is_rejected_and_never_printed(sim, tmp_path):
    result = run_cli(["tasks"], tmp_path, kps_env(sim, CLOUD_SDK_SK="wrong-secret-value-xyz"))
    assert result.returncode == 1
    assert "401" in result.stderr
    assert "wrong-secret-value-xyz" not in result.stdout + result.stderr
    assert AK not in result.stdout + result.stderr


def test_expired_token_hint(sim, tmp_path):
    env = {"KPS_ENDPOINT": sim.url, "KPS_PROJECT_ID": PROJECT, "KPS_AUTH_TOKEN": "expired-token-abc"}
    result = run_cli(["tasks"], tmp_path, env)
    assert result.returncode == 1
    assert "expired" in result.stderr and "CLOUD_SDK_AK" in result.stderr
    assert "expired-token-abc" not in result.stderr


def test_unreachable_endpoint_exit_1(tmp_path):
    env = {"KPS_ENDPOINT": "http://127.0.0.1:9", "KPS_PROJECT_ID": PROJECT, "KPS_AUTH_TOKEN": "t"}
    result = run_cli(["tasks"], tmp_path, env)
    assert result.returncode == 1
    assert "cannot reach KPS" in result.stderr


@pytest.mark.parametrize(
    "env, name",
    [
        ({}, "KPS_PROJECT_ID"),
        ({"KPS_PROJECT_ID": "p", "KPS_AUTH_TOKEN": "t"}, "KPS_REGION"),
        ({"KPS_PROJECT_ID": "p", "KPS_REGION": "cn-north-4"}, "CLOUD_SDK_AK"),
        (
            {
                "KPS_PROJECT_ID": "p",
                "KPS_REGION": "cn-north-4",
                "KPS_AUTH_TOKEN": "t",
                "KPSBOT_PAGE_SIZE": "x",
            },
            "KPSBOT_PAGE_SIZE",
        ),
    ],
)
def test_missing_or_bad_setting_exit_2_one_line(tmp_path, env, name):
    result = run_cli(["tasks"], tmp_path, env)
    assert result.returncode == 2
    assert name in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_env_file_configures_the_client(sim, tmp_path):
    (tmp_path / ".env").write_text(
        f"KPS_ENDPOINT={sim.url}\nKPS_PROJECT_ID={PROJECT}\nCLOUD_SDK_AK={AK}\nCLOUD_SDK_SK={SK}\n"
    )
    (tmp_path / ".env").chmod(0o600)
    sim.add_task(server_name="from-dotenv")
    result = run_cli(["tasks", "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tasks"][0]["server_name"] == "from-dotenv"


def test_usage_error_exit_2(tmp_path):
    result = run_cli(["tasks", "--limit", "0"], tmp_path)
    assert result.returncode == 2


def test_python_dash_m_and_version(tmp_path):
    result = run_cli(["--version"], tmp_path)
    assert result.returncode == 0 and "kpsbot" in result.stdout


def test_simulate_with_half_an_aksk_pair_is_a_settings_error(tmp_path):
    result = run_cli(["simulate", "--port", "0", "--project-id", "p", "--ak", "ONLYAK"], tmp_path)
    assert result.returncode == 2
    assert "CLOUD_SDK_SK" in result.stderr and "Traceback" not in result.stderr
