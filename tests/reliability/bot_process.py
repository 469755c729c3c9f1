"""`kpsbot run` as a real process in HTTP mode, with helpers to start, probe, kill and stop it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import requests
from support.run_process import free_port, wait_until  # noqa: F401 - re-exported for the tests
from support.slack_requests import SECRET

PROJECT = "p-rel"
AK, SK = "AK-rel", "SK-rel"
BOT_TOKEN = "xoxb-rel"


def bot_environment(sim_url: str, slack_url: str, **extra: str) -> dict:
    """The process environment for `kpsbot run`: nothing inherited that could configure kpsbot."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KPS", "SLACK", "CLOUD_SDK", "PORT"))}
    env.update(
        KPS_ENDPOINT=sim_url,
        KPS_PROJECT_ID=PROJECT,
        CLOUD_SDK_AK=AK,
        CLOUD_SDK_SK=SK,
        SLACK_BOT_TOKEN=BOT_TOKEN,
        SLACK_SIGNING_SECRET=SECRET,
        SLACK_API_URL=slack_url,
        KPSBOT_PACE_SECONDS="0",  # the fake Slack does not rate-limit; these tests count every message
    )
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


class BotProcess:
    """One `kpsbot run` in HTTP mode on loopback; output goes to files (a full pipe would block it)."""

    def __init__(self, env: dict, cwd: Path, name: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.name = name
        self.out_path = cwd / f"{name}.out"
        self.err_path = cwd / f"{name}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "kpsbot", "run", "--host", "127.0.0.1"],
                cwd=cwd,
                env={**env, "PORT": str(self.port)},
                stdout=out,
                stderr=err,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def health(self) -> dict | None:
        try:
            return requests.get(f"{self.url}/healthz", timeout=2).json()
        except (requests.RequestException, ValueError):
            return None

    def wait_healthy(self, timeout: float = 20.0) -> dict:
        def ready():
            assert self.alive(), f"{self.name} exited early:\n{self.output()[-3000:]}"
            return self.health()

        return wait_until(ready, timeout, f"{self.name} serving /healthz")

    def kill(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signal the process and wait; a process still running after `timeout` (+5 s) is killed."""
        if self.alive():
            self.process.send_signal(signum)
            try:
                self.process.wait(timeout=timeout + 5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode

    def output(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        return self.out_path.read_text(errors="replace") + self.err_path.read_text(errors="replace")
