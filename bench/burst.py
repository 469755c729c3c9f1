"""The Slack calls the real watcher makes when thousands of tasks start, or finish, in one poll.

In process: kpsbot's Watcher and Store (a temporary SQLite file), the KPS client against an
in-process simulator, and slack-sdk (SlackSender.from_token) against the fake Slack Web API the
tests use. A baseline poll, then N tasks start at once, then the same N finish (a fifth of them
failed). Every message Slack receives is checked against Slack's limits with the tests'
`assert_valid_message`; an invalid message makes the run fail (a correctness check, not a timing
goal). The times are for information only.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from common import ROOT, print_table, save

sys.path.insert(0, str(ROOT / "tests"))

from support.fake_slack import MAX_BLOCKS, MAX_TEXT, FakeSlack, assert_valid_message  # noqa: E402

from kpsbot.kps.auth import AkSkAuth  # noqa: E402
from kpsbot.kps.client import KpsClient  # noqa: E402
from kpsbot.settings import Settings  # noqa: E402
from kpsbot.simulator import Simulator, SimulatorServer  # noqa: E402
from kpsbot.slack.sender import SlackSender  # noqa: E402
from kpsbot.store import Store  # noqa: E402
from kpsbot.watch.cycle import WatchedProject, Watcher  # noqa: E402
from kpsbot.watch.outbox import Outbox, Pacer  # noqa: E402
from kpsbot.watch.plan import ProjectInfo, Route  # noqa: E402

PROJECT, AK, SK = "burst0project", "BURSTAK", "burst-secret"
CHANNEL = "C0BURST"
FAIL_EVERY = 5  # every fifth finishing task fails
MESSAGE_METHODS = ("chat.postMessage", "chat.update")


def _check(calls: list[dict]) -> tuple[int, list[str], int, int]:
    """(messages checked, problems, longest text, most blocks) for the messages among `calls`."""
    checked, problems, longest, most_blocks = 0, [], 0, 0
    for call in calls:
        if call["method"] not in MESSAGE_METHODS:
            continue
        checked += 1
        longest = max(longest, len(call["args"].get("text") or ""))
        most_blocks = max(most_blocks, len(call["args"].get("blocks") or []))
        try:
            assert_valid_message(call["args"])
        except AssertionError as exc:
            problems.append(f"{call['method']}: {exc}")
    return checked, problems, longest, most_blocks


def run(size: int) -> list[dict]:
    """One row per poll (baseline, N starts, N finishes): the Slack calls it caused and their checks."""
    defaults = Settings()
    sim = Simulator(project_id=PROJECT, ak=AK, sk=SK, tasks=0, seed=11, rate=0.0)
    with (
        SimulatorServer(sim) as server,
        FakeSlack() as slack,
        tempfile.TemporaryDirectory() as tmp,
    ):
        kps = KpsClient(server.url, PROJECT, AkSkAuth(AK, SK, PROJECT), retries=0)
        sender = SlackSender.from_token("xoxb-burst", base_url=slack.url)
        store = Store(Path(tmp) / "burst.db")
        outbox = Outbox(store, {"*": sender}, fixed_channel=CHANNEL, pacer=Pacer(0))
        watcher = Watcher(
            [WatchedProject(ProjectInfo(PROJECT, PROJECT, "simulator"), kps)],
            store,
            outbox,
            routes=[Route(CHANNEL)],
            burst=defaults.burst,
            outage_polls=defaults.outage_polls,
            stuck_minutes=0,
        )
        rows = []

        def poll(label: str) -> None:
            before, kps_before = len(slack.calls), sim.requests
            begun = time.perf_counter()
            report = watcher.run_cycle()
            seconds = time.perf_counter() - begun
            if not report.ok or report.pending or report.failed_deliveries:
                raise SystemExit(f"burst {size:,} {label}: the cycle did not deliver: {report.summary()}")
            calls = slack.calls[before:]
            checked, problems, longest, most_blocks = _check(calls)
            for problem in problems:
                print(f"INVALID ({label}, {size:,}): {problem}", file=sys.stderr)
            rows.append(
                {
                    "tasks": size,
                    "poll": label,
                    "started": report.started,
                    "finished": report.finished,
                    "slack_calls": dict(Counter(c["method"] for c in calls)),
                    "kps_requests": sim.requests - kps_before,
                    "messages_checked": checked,
                    "invalid_messages": len(problems),
                    "longest_text": longest,
                    "most_blocks": most_blocks,
                    "cycle_s": seconds,
                }
            )

        try:
            poll("baseline")
            started = [sim.add_task(f"RUNNING_{('RESET', 'REPLACE', 'UNBIND')[n % 3]}") for n in range(size)]
            poll("starts")
            for n, task in enumerate(started):
                sim.finish_task(task["task_id"], success=n % FAIL_EVERY != 0)
            poll("finishes")
        finally:
            store.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1,000 tasks only (CI)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sizes = [1_000] if args.quick else [1_000, 10_000]
    rows = [row for size in sizes for row in run(size)]
    print_table(
        "burst: Slack calls for N simultaneous starts, then N finishes (real watcher, fake Slack)",
        [
            "tasks",
            "poll",
            "started",
            "finished",
            "Slack calls",
            "KPS requests",
            "max text/blocks",
            "valid",
            "cycle s",
        ],
        [
            [
                f"{r['tasks']:,}",
                r["poll"],
                r["started"],
                r["finished"],
                ", ".join(f"{m} {n}" for m, n in sorted(r["slack_calls"].items())) or "none",
                r["kps_requests"],
                f"{r['longest_text']}/{r['most_blocks']}",
                f"{r['messages_checked'] - r['invalid_messages']}/{r['messages_checked']}"
                + (" FAIL" if r["invalid_messages"] else " pass"),
                r["cycle_s"],
            ]
            for r in rows
        ],
    )
    print(
        f"each message checked with the tests' assert_valid_message: text <= {MAX_TEXT} characters, "
        f"<= {MAX_BLOCKS} blocks, every block accepted by slack-sdk's models"
    )
    invalid = sum(r["invalid_messages"] for r in rows)
    save("burst", rows, quick=args.quick)
    if invalid:
        print(f"burst: {invalid} message(s) outside Slack's limits", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
