"""Reliability tests run real `kpsbot run` processes; `bot_process` (next to this file) starts them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from bot_process import BotProcess  # noqa: E402


@pytest.fixture
def launch(tmp_path):
    """launch(env, name) -> a started BotProcess; every process is stopped after the test."""
    started: list[BotProcess] = []

    def start(env: dict, name: str = "bot") -> BotProcess:
        bot = BotProcess(env, tmp_path, f"{name}-{len(started)}")
        started.append(bot)
        return bot

    yield start
    for bot in started:
        if bot.alive():
            bot.kill()
