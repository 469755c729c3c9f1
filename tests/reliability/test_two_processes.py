"""Two `kpsbot run` on one database: one watcher posts, the other serves Slack and takes over the lease."""

from __future__ import annotations

import signal
import time
from collections import Counter
from datetime import datetime, timezone

from bot_process import AK, PROJECT, SK, bot_environment, wait_until
from channel import CHANNEL, read_slack
from support.fake_slack import FakeSlack

from kpsbot.simulator import Simulator, SimulatorServer


def polled_since(bot, moment: datetime, health: dict | None = None) -> bool:
    """True once the bot's last successful poll asked KPS after `moment`."""
    last = (health if health is not None else bot.health() or {}).get("last_successful_poll")
    return bool(last) and datetime.fromisoformat(last) > moment


def leaders(*bots) -> list[str]:
    return [bot.name for bot in bots if (bot.health() or {}).get("watcher") == "leader"]


def test_one_leader_posts_and_the_other_takes_over_on_sigterm_and_on_sigkill(tmp_path, launch):
    # Tasks outlive the longest gap without a poll (a killed leader's lease expiring), so each is seen.
    sim = Simulator(project_id=PROJECT, ak=AK, sk=SK, seed=11, rate=0.0, finish_after=(10.0, 14.0))
    with SimulatorServer(sim) as server, FakeSlack() as fake:

        def env(token: str) -> dict:
            # A token per process tells whose call each Slack call was.
            return bot_environment(
                server.url,
                fake.url,
                SLACK_BOT_TOKEN=token,
                KPSBOT_CHANNEL=CHANNEL,
                KPSBOT_POLL_SECONDS="1",
                KPSBOT_BURST="1000",
                KPSBOT_DB=str(tmp_path / "shared.db"),
            )

        a = launch(env("xoxb-a"), "a")
        a.wait_healthy()
        wait_until(lambda: (a.health() or {}).get("last_successful_poll"), 20, "a's baseline poll")
        b = launch(env("xoxb-b"), "b")
        b.wait_healthy()
        sim.rate = 2.0
        time.sleep(4)
        assert leaders(a, b) == [a.name]
        assert b.health()["watcher"] == "standby"

        # A clean stop releases the lease: b takes over at its next iteration.
        stopped = time.monotonic()
        assert a.stop(signal.SIGTERM) == 0, a.output()[-2000:]
        wait_until(lambda: leaders(b) == [b.name], 5, "b taking the lease after a's SIGTERM")
        took_over_after_sigterm = time.monotonic() - stopped
        c = launch(env("xoxb-c"), "c")
        c.wait_healthy()
        time.sleep(3)
        assert leaders(b, c) == [b.name]

        # A killed leader cannot release the lease: c takes over once it expires (3 polls + 5 s).
        killed = time.monotonic()
        b.kill()
        wait_until(lambda: leaders(c) == [c.name], 20, "c taking the lease after b's SIGKILL")
        took_over_after_sigkill = time.monotonic() - killed
        time.sleep(3)

        # No more starts; then a poll that asked after that has listed every task there is. (A
        # status look-up after the last listing can start one — the simulator starts tasks when
        # asked anything — and ending it before any listing would make it one no poller sees.)
        sim.rate = 0.0
        paused = datetime.now(timezone.utc)
        wait_until(lambda: polled_since(c, paused), 10, "c to list the last starts")
        for n, task in enumerate(sim.running()):  # end the rest now rather than waiting for them
            sim.finish_task(task["task_id"], success=n % 3 != 0)
        since = datetime.now(timezone.utc)

        def delivered() -> bool:
            health = c.health() or {}
            return polled_since(c, since, health) and not health["pending_notifications"]

        wait_until(delivered, 20, "c to deliver the last finishes")
        assert c.stop(signal.SIGTERM) == 0
        transitions = sim.transitions()
        calls = [call for call in fake.calls if call["method"].startswith("chat.")]
        slack = read_slack(fake)

    started = Counter(task_id for task_id, _ in slack["starts"])
    finished = Counter(task_id for task_id, _, _ in slack["finishes"])
    expected_starts = {t["task_id"] for t in transitions if t["kind"] == "started"}
    expected_finishes = {t["task_id"] for t in transitions if t["kind"] == "finished"}
    duplicates = sum(n - 1 for n in started.values()) + sum(n - 1 for n in finished.values())
    print(
        f"\ntwo processes: {len(expected_starts)} starts, {len(expected_finishes)} finishes, "
        f"{len(calls)} Slack calls by {dict(Counter(c['token'] for c in calls))}, "
        f"duplicates {duplicates}, takeover after SIGTERM {took_over_after_sigterm:.1f} s, "
        f"after SIGKILL {took_over_after_sigkill:.1f} s"
    )
    assert set(started) == expected_starts and set(finished) == expected_finishes
    assert duplicates <= 1  # only b's SIGKILL could fall between a Slack call and recording it
    # Never both posting: the posting process changes twice (a -> b -> c) and never goes back.
    tokens = [call["token"] for call in calls]
    runs = [token for n, token in enumerate(tokens) if n == 0 or tokens[n - 1] != token]
    assert runs == ["xoxb-a", "xoxb-b", "xoxb-c"], runs
    assert took_over_after_sigterm < 5
