"""`kpsbot run` as a real subprocess: its environment, starting it, waiting on it and stopping it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_environment(**settings: str) -> dict:
    """This process's environment without anything that could configure kpsbot, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KPS", "SLACK", "CLOUD_SDK", "PORT"))}
    env.update(settings)
    return env


def run_kpsbot(
    args: list[str], cwd: Path | str, env: dict, timeout: float = 60
) -> subprocess.CompletedProcess:
    """`python -m kpsbot ARGS` run to its end with exactly `env`: exit status, stdout, stderr."""
    return subprocess.run(
        [sys.executable, "-m", "kpsbot", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_environment(kps_url: str, slack_api_url: str, project: str, **settings: str) -> dict:
    """The environment for `kpsbot run`: nothing inherited that could configure kpsbot, plus `settings`."""
    env = clean_environment()
    env.update(
        KPS_ENDPOINT=kps_url,
        KPS_PROJECT_ID=project,
        CLOUD_SDK_AK="AK",
        CLOUD_SDK_SK="SK",
        SLACK_API_URL=slack_api_url,
        **settings,
    )
    return env


def start(env: dict, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "kpsbot", "run", "--host", "127.0.0.1"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1]
        try:
            return requests.get(f"{url}/healthz", timeout=1).json()
        except requests.ConnectionError:
            time.sleep(0.1)
    raise AssertionError("kpsbot run did not serve /healthz in time")


def stop_within(process: subprocess.Popen, signum: int, seconds: float = 10) -> tuple[int, float]:
    """Send `signum`, wait for the exit (killing it `seconds` + 5 s on); `(exit status, seconds taken)`."""
    started = time.monotonic()
    process.send_signal(signum)
    try:
        process.wait(timeout=seconds + 5)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, time.monotonic() - started


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something true, and return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout:g} s")
        time.sleep(0.05)
