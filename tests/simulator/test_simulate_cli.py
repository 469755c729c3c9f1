"""`kpsbot simulate` as a real process: the projects of the settings (or options), IAM, SIGTERM."""

import os
import re
import selectors
import signal
import subprocess
import sys
from contextlib import contextmanager

import pytest
import requests
from simkit import IamAuth

from kpsbot.kps.auth import AkSkAuth, TokenAuth
from kpsbot.kps.client import KpsClient
from kpsbot.simulator import derived_project_id

AK, SK, TOKEN = "AKCLISIM", "sk-cli-sim-secret", "tok-cli-sim-secret"
URL = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")


def environment(**settings):
    """Nothing inherited that could configure kpsbot or the SDK, plus `settings`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KPS", "SLACK", "CLOUD_SDK", "HUAWEICLOUD", "PORT"))
    }
    env.update(settings)
    return env


def first_line(proc, timeout=20.0):
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError(f"kpsbot simulate printed nothing within {timeout:g} s")
    return proc.stdout.readline().strip()


@contextmanager
def simulate(args, env, cwd):
    """Start `kpsbot simulate --port 0 ARGS`; yields (process, start-up line, base URL); always stopped."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "kpsbot", "simulate", "--port", "0", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = first_line(proc)
        match = URL.search(line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        yield proc, line, match.group(1)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def stop(proc):
    """SIGTERM; the exit status and everything printed after the start-up line."""
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    return proc.returncode, out + err


def look_up(url, name):
    response = requests.get(f"{url}/v3/projects", params={"name": name}, auth=IamAuth(AK, SK), timeout=5)
    response.raise_for_status()
    return [project["id"] for project in response.json()["projects"]]


def test_serves_the_projects_of_the_settings_and_their_iam_look_up(tmp_path):
    env = environment(
        KPS_PROJECTS="cn-north-4,ap-southeast-1_prod:0a1b",
        CLOUD_SDK_AK=AK,
        CLOUD_SDK_SK=SK,
        KPS_AUTH_TOKEN=TOKEN,
    )
    north_id = derived_project_id("cn-north-4")
    with simulate(["--tasks", "3", "--rate", "0"], env, tmp_path) as (proc, line, url):
        assert f"cn-north-4 (region cn-north-4, id {north_id}, 3 tasks)" in line
        assert "ap-southeast-1_prod (region ap-southeast-1, id 0a1b, 3 tasks)" in line
        assert f"KPS_ENDPOINT={url}/{{region}} KPS_IAM_ENDPOINT={url}/{{region}}" in line

        assert look_up(url, "cn-north-4") == [north_id]  # a name-only project, under its derived ID
        assert look_up(f"{url}/ap-southeast-1", "ap-southeast-1_prod") == ["0a1b"]
        for region, project_id in (("cn-north-4", north_id), ("ap-southeast-1", "0a1b")):
            client = KpsClient(f"{url}/{region}", project_id, AkSkAuth(AK, SK, project_id))
            assert client.list_running_tasks().total == 3
        assert KpsClient(url, "0a1b", TokenAuth(TOKEN, "0a1b")).list_running_tasks().total == 3

        code, rest = stop(proc)
    assert code == 0, rest
    for secret in (AK, SK, TOKEN):
        assert secret not in line + rest


def test_project_options_win_over_the_settings(tmp_path):
    env = environment(KPS_PROJECTS="cn-north-4", CLOUD_SDK_AK=AK, CLOUD_SDK_SK=SK)
    args = ["--project", "cn-east-3_dev", "--project", "cn-east-3:0c0d", "--tasks", "1", "--seed", "5"]
    with simulate(args, env, tmp_path) as (proc, line, url):
        projects = requests.get(f"{url}/_sim/projects", timeout=5).json()["projects"]
        assert [(p["name"], p["region"], p["id"]) for p in projects] == [
            ("cn-east-3_dev", "cn-east-3", derived_project_id("cn-east-3_dev")),
            ("cn-east-3", "cn-east-3", "0c0d"),
        ]
        assert line.endswith(f"set KPS_ENDPOINT={url} KPS_IAM_ENDPOINT={url}")  # one region: no prefix needed
        assert look_up(url, "cn-north-4") == []
        assert stop(proc)[0] == 0


def test_with_no_project_anywhere_it_serves_cn_north_4(tmp_path):
    with simulate(["--tasks", "2"], environment(), tmp_path) as (proc, line, url):
        assert f"cn-north-4 (region cn-north-4, id {derived_project_id('cn-north-4')}, 2 tasks)" in line
        response = requests.get(f"{url}/v3/{derived_project_id('cn-north-4')}/running-tasks", timeout=5)
        assert response.json()["total"] == 2  # no credentials configured: nothing is checked
        assert stop(proc)[0] == 0


def test_project_id_is_a_one_project_shortcut(tmp_path):
    env = environment(KPS_PROJECTS="cn-north-4", CLOUD_SDK_AK=AK, CLOUD_SDK_SK=SK)
    with simulate(["--project-id", "0123abcd", "--tasks", "4"], env, tmp_path) as (proc, line, url):
        assert line == f"KPS simulator listening on {url} (project 0123abcd, 4 tasks)"
        assert KpsClient(url, "0123abcd", AkSkAuth(AK, SK, "0123abcd")).list_running_tasks().total == 4
        assert stop(proc)[0] == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--project", "cn-north-4", "--project-id", "p"], "--project-id"),
        (["--project", "cn-north-4:"], "NAME:ID"),
        (["--project", "cn-north-4:0a1b", "--project", "cn-east-3:0a1b"], "0a1b"),
    ],
    ids=["both", "empty id", "same id"],
)
def test_bad_project_options_are_usage_errors(tmp_path, args, message):
    result = subprocess.run(
        [sys.executable, "-m", "kpsbot", "simulate", "--port", "0", *args],
        cwd=tmp_path,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
