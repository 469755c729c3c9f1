"""Soak: KPS churns tasks while KPS and Slack fail ~20% of calls and `kpsbot run` is SIGKILLed and restarted.

At the end every start and finish the simulator produced must be in Slack exactly once, with no
fabricated notification. The one allowed exception is a kill between a successful Slack call and
recording it; the duplicates that actually caused are counted and printed.

The CI version (default run) lasts about a minute; `pytest -m slow` runs the long one, where KPS
timeouts are real (longer than the client's 15 s read timeout) and the outbox drains on its own
back-off schedule instead of being fast-forwarded.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from bot_process import AK, BOT_TOKEN, PROJECT, SK, bot_environment, wait_until
from channel import CHANNEL, read_slack
from support.fake_slack import FakeSlack

from kpsbot.simulator import Simulator, SimulatorServer

OUTCOME_TEXT = {"succeeded": "succeeded", "failed": "failed", "unknown": "finished (outcome unknown)"}


@dataclass(frozen=True)
class SoakPlan:
    churn_seconds: float  # tasks start at `rate` per second for this long
    rate: float
    finish_after: tuple[float, float]  # longer than the longest gap without a poll (a kill + lease expiry)
    kills: int
    kps_fault_kinds: tuple[str, ...]
    kps_timeout_seconds: float  # how long a "timeout" fault holds the answer back
    fast_forward: bool  # make backed-off notifications due at once once the faults are healed
    drain_seconds: float


CI = SoakPlan(
    churn_seconds=25,
    rate=3.0,
    finish_after=(18.0, 22.0),
    kills=3,
    # A "timeout" here is a 0.5 s slow answer: real client timeouts (15 s each) would not fit in a
    # minute; the slow soak has them.
    kps_fault_kinds=("status", "nonjson", "timeout", "reset"),
    kps_timeout_seconds=0.5,
    fast_forward=True,
    drain_seconds=45,
)
LONG = SoakPlan(
    churn_seconds=240,
    rate=2.0,
    finish_after=(40.0, 90.0),
    kills=8,
    kps_fault_kinds=("status", "nonjson", "timeout", "reset"),
    kps_timeout_seconds=16.0,  # beyond the client's 15 s read timeout: a real timeout
    fast_forward=False,
    drain_seconds=400,
)


def fast_forward_outbox(db_path: Path) -> None:
    """Make every backed-off notification due now: the clock jump a long wait would give."""
    with sqlite3.connect(db_path, timeout=10) as conn:
        conn.execute("update outbox set next_attempt_at = 0 where status = 'pending'")
    conn.close()


def db_rows(db_path: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def observable(task: dict, polls: list[tuple[float, int]]) -> bool:
    """Seen by at least one good poll while running; a task that lived between two polls cannot be."""
    return any(task["start"] < at - ms / 1000 and at < task["finish"] for at, ms in polls)


def run_soak(plan: SoakPlan, tmp_path: Path, launch, seed: int) -> dict:
    rng = random.Random(seed)
    db_path = tmp_path / "soak.db"
    sim = Simulator(project_id=PROJECT, ak=AK, sk=SK, seed=seed, rate=0.0, finish_after=plan.finish_after)
    fake = FakeSlack(bot_token=BOT_TOKEN, seed=seed)
    fake.fault_methods = ("chat.postMessage", "chat.update")  # auth.test at start-up stays reliable
    with SimulatorServer(sim) as server, fake:
        env = bot_environment(
            server.url,
            fake.url,
            KPSBOT_CHANNEL=CHANNEL,
            KPSBOT_POLL_SECONDS="1",
            KPSBOT_BURST="1000",  # one message per task, so each can be counted
            KPSBOT_DB=str(db_path),
        )
        bot = launch(env, "soak")
        bot.wait_healthy()
        wait_until(lambda: (bot.health() or {}).get("last_successful_poll"), 20, "the baseline poll")

        sim.fault_kinds = plan.kps_fault_kinds
        sim.timeout_seconds = plan.kps_timeout_seconds
        sim.fault_ratio = 0.2
        fake.fault_ratio = 0.2  # 429 with Retry-After 1, HTTP 500, ok:false internal_error
        sim.rate = plan.rate
        begun = time.monotonic()
        # Kills at random moments, one in each equal slice of the churn (so no two kills overlap a lease).
        slice_len = plan.churn_seconds / plan.kills
        kill_at = [i * slice_len + rng.uniform(1.0, slice_len * 0.6) for i in range(plan.kills)]
        kills = 0
        for moment in kill_at:
            time.sleep(max(0.0, begun + moment - time.monotonic()))
            bot.kill()
            kills += 1
            bot = launch(env, "soak")
        time.sleep(max(0.0, begun + plan.churn_seconds - time.monotonic()))

        sim.rate = 0.0  # no new starts; the running ones finish on schedule
        wait_until(
            lambda: (sim.tick() or True) and sim.counts()["running"] == 0,
            plan.finish_after[1] + 5,
            "every task to finish",
        )
        since = time.time()

        def drained() -> bool:
            if plan.fast_forward:
                fast_forward_outbox(db_path)
            health = bot.health() or {}
            last = db_rows(db_path, "select max(at) from polls where ok = 1")[0][0] or 0
            running = db_rows(db_path, "select count(*) from tasks where state = 'running'")[0][0]
            return last > since and running == 0 and health.get("pending_notifications") == 0

        try:  # first drain through the faults, then heal them for whatever is left
            wait_until(drained, 10, "the outbox to drain while KPS and Slack still fail")
        except AssertionError:
            pass
        faulty_calls = len(fake.calls) + len(fake.failed_calls)
        sim.clear_faults()
        fake.fault_ratio = 0.0
        since = time.time()
        wait_until(drained, plan.drain_seconds, "the outbox to drain")
        health = bot.health()
        assert bot.stop(signal.SIGTERM) == 0, bot.output()[-3000:]

        transitions = sim.transitions()
        polls = db_rows(db_path, "select at, duration_ms from polls where ok = 1")
        outbox = Counter(
            row[0] for row in db_rows(db_path, "select status from outbox where kind != 'baseline'")
        )
        slack = read_slack(fake)
        slack_attempts = len(fake.calls) + len(fake.failed_calls)
        slack_failures = len(fake.failed_calls)
        kps_requests = sim.requests
        outputs = "".join(path.read_text(errors="replace") for path in tmp_path.glob("soak-*.err"))

    tasks: dict[str, dict] = {}
    for t in transitions:
        entry = tasks.setdefault(t["task_id"], {"start": None, "finish": float("inf"), "outcome": None})
        if t["kind"] == "started":
            entry["start"] = t["at"]
        else:
            entry["finish"], entry["outcome"] = t["at"], t["outcome"]
    unseen = {task_id for task_id, t in tasks.items() if not observable(t, polls)}
    expected = set(tasks) - unseen

    started = Counter(task_id for task_id, _ in slack["starts"])
    finished = Counter(task_id for task_id, _, _ in slack["finishes"])
    edits = Counter(slack["edits"])
    early = [
        task_id
        for task_id, _, at in slack["finishes"]
        if task_id in tasks and at < tasks[task_id]["finish"] - 0.01
    ]
    wrong_outcome = [
        (task_id, text)
        for task_id, text, _ in slack["finishes"]
        if task_id in tasks and not text.endswith(OUTCOME_TEXT[tasks[task_id]["outcome"]])
    ]
    unknown_outcome = [task_id for task_id, text in wrong_outcome if text.endswith(OUTCOME_TEXT["unknown"])]
    figures = {
        "plan": plan.__dict__,
        "seed": seed,
        "kills": kills,
        "kps_requests": kps_requests,
        "slack_attempts": slack_attempts,
        "slack_failures": slack_failures,
        "slack_attempts_while_failing": faulty_calls,
        "transitions": {"started": len(tasks), "finished": sum(1 for t in tasks.values() if t["outcome"])},
        "unobservable_tasks": len(unseen),
        "delivered": {"started": sum(started.values()), "finished": sum(finished.values())},
        "edits": sum(edits.values()),
        "lost": {
            "started": sorted(expected - set(started)),
            "finished": sorted(expected - set(finished)),
        },
        "duplicates": {
            "started": sum(n - 1 for n in started.values()),
            "finished": sum(n - 1 for n in finished.values()),
            "edits": sum(n - 1 for n in edits.values()),
        },
        "fabricated": sorted((set(started) | set(finished) | set(edits)) - set(tasks)),
        "finished_before_finishing": early,
        "outcome_unknown": len(unknown_outcome),
        "outcome_wrong": [w for w in wrong_outcome if w[0] not in unknown_outcome],
        "other_messages": dict(slack["other"]),
        "outbox": dict(outbox),
        "health": health,
        "tracebacks_in_logs": outputs.count("Traceback"),
    }
    return figures


def check(figures: dict, tmp_path: Path, name: str) -> None:
    text = json.dumps(figures, indent=2, default=str)
    print(f"\nsoak figures ({name}):\n{text}")
    (tmp_path / f"{name}-figures.json").write_text(text)
    Path("/tmp").joinpath(f"kpsbot-{name}-figures.json").write_text(text)
    assert figures["lost"] == {"started": [], "finished": []}, text
    assert figures["fabricated"] == [] and figures["finished_before_finishing"] == [], text
    assert figures["outcome_wrong"] == [], text
    # The only allowed duplicates: a kill between a successful Slack call and recording it.
    duplicates = figures["duplicates"]
    assert duplicates["started"] + duplicates["finished"] + duplicates["edits"] <= figures["kills"], text
    assert figures["unobservable_tasks"] <= 1, text  # finish_after is chosen to make this 0
    assert figures["transitions"]["started"] > 20 and figures["slack_failures"] > 5, text
    assert figures["outbox"].get("failed", 0) == 0, text


def test_soak_nothing_lost_nothing_repeated(tmp_path, launch):
    check(run_soak(CI, tmp_path, launch, seed=6), tmp_path, "soak-ci")


@pytest.mark.slow
def test_soak_long(tmp_path, launch):
    check(run_soak(LONG, tmp_path, launch, seed=66), tmp_path, "soak-long")
