"""The Slack calls the real watcher makes when thousands of tasks start, or finish, in one poll.

In process: kpsbot's Watcher and Store (a temporary SQLite file), the KPS client against an
in-process simulator, and slack-sdk (SlackSender.from_token) against the fake Slack Web API the
tests use. A baseline poll, then N tasks start at once, then the same N finish (a fifth of them
failed). Every message Slack receives is checked against Slack's limits with the tests'
`assert_valid_message`; an invalid message makes the run fail (a correctness check, not a timing
goal). The times are for information only.

`--channels 20` (issue 11's bench): the same 10,000-task burst with 20 subscribed channels, half
of them filtered (resets only, replaces only, failures only, a text filter, a project filter),
delivered with the real per-channel pacing (KPSBOT_PACE_SECONDS's default). Per channel: the
messages it received in each poll (at most 3), whether its calls would have tripped Slack's
one-message-a-second limit, and the delivery's time beside one channel's.
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


# Issue 11's twenty channels: ten hear everything, ten are filtered in the ways teams filter.
FILTERED = (
    {"actions": ("RESET",)},
    {"actions": ("REPLACE",)},
    {"actions": ("UNBIND",)},
    {"failures_only": True},
    {"failures_only": True, "actions": ("RESET",)},
    {"text": "db"},
    {"text": "web"},
    {"projects": (PROJECT,)},
    {"actions": ("RESET", "REPLACE")},
    {"text": "db", "failures_only": True},
)


def twenty_routes() -> list[Route]:
    plain = [Route(f"C0ALL{n:02d}") for n in range(10)]
    return plain + [Route(f"C0FILTER{n:02d}", **spec) for n, spec in enumerate(FILTERED)]


def run(size: int, routes: list[Route] | None = None, pace: float = 0.0) -> list[dict]:
    """One row per poll (baseline, N starts, N finishes): the Slack calls it caused and their checks.

    With `routes`, each row also has the messages per channel, and `pace` > 0 paces each channel
    as the watcher does (Pacer(pace, burst=5)) and checks the calls against that limit."""
    routes = routes or [Route(CHANNEL)]
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
        outbox = Outbox(store, {"*": sender}, fixed_channel=routes[0].channel, pacer=Pacer(pace))
        watcher = Watcher(
            [WatchedProject(ProjectInfo(PROJECT, PROJECT, "simulator"), kps)],
            store,
            outbox,
            routes=routes,
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
            per_channel = Counter(c["args"].get("channel") for c in calls if c["method"] in MESSAGE_METHODS)
            too_fast = [ch for ch in per_channel if pace and not _within_limit(calls, ch, pace)]
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
                    "channels": len(routes),
                    "messages_per_channel": {r.channel: per_channel.get(r.channel, 0) for r in routes},
                    "channels_over_rate_limit": too_fast,
                    "texts": {
                        c["args"]["channel"]: c["args"].get("text", "")
                        for c in calls
                        if c["method"] == "chat.postMessage"
                    },
                }
            )

        try:
            poll("baseline")
            started = [
                sim.add_task(f"RUNNING_{('RESET', 'REPLACE', 'UNBIND')[n % 3]}", server_name=_server(n))
                for n in range(size)
            ]
            poll("starts")
            for n, task in enumerate(started):
                sim.finish_task(task["task_id"], success=n % FAIL_EVERY != 0)
            poll("finishes")
        finally:
            store.close()
    return rows


def _server(n: int) -> str:
    return ("web", "db", "cache", "api")[n % 4] + f"-{n:05d}"


def _within_limit(calls: list[dict], channel: str, interval: float, burst: int = 5) -> bool:
    """Whether `channel`'s messages kept to `burst` at once, then one per `interval` seconds."""
    times = sorted(
        c["at"] for c in calls if c["args"].get("channel") == channel and c["method"] in MESSAGE_METHODS
    )
    # n messages in (t_i .. t_j] need at least (n - burst) intervals between them; allow 10% jitter.
    return all(
        times[j] - times[i] >= (j - i + 1 - burst) * interval * 0.9
        for i in range(len(times))
        for j in range(i, len(times))
    )


def channels_table(size: int, count: int, pace: float) -> tuple[list[dict], int]:
    """One channel, then `count` channels (half filtered), each a full burst with real pacing."""
    one = run(size, [Route(CHANNEL)], pace)
    many = run(size, twenty_routes()[:count], pace)
    most = max((n for r in many for n in r["messages_per_channel"].values()), default=0)
    print_table(
        f"burst across channels: {size:,} tasks start, then finish, paced {pace:g} s/message per channel",
        ["channels", "poll", "Slack calls", "messages per channel (min-max)", "over limit", "cycle s"],
        [
            [
                r["channels"],
                r["poll"],
                ", ".join(f"{m} {n}" for m, n in sorted(r["slack_calls"].items())) or "none",
                f"{min(r['messages_per_channel'].values())}-{max(r['messages_per_channel'].values())}",
                len(r["channels_over_rate_limit"]),
                r["cycle_s"],
            ]
            for r in one + many
        ],
    )
    slowest = {r["poll"]: r["cycle_s"] for r in one}
    ratios = {r["poll"]: r["cycle_s"] / slowest[r["poll"]] for r in many if slowest[r["poll"]] > 0}
    print(
        f"{count} channels: at most {most} message(s) per channel in a poll; "
        "time against one channel: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items())
    )
    routes = {r.channel: r for r in twenty_routes()}
    for r in many:
        if r["poll"] == "baseline":
            continue
        print(f"\n{r['poll']} poll, per channel: messages, its filter, what its message says")
        for channel, n in r["messages_per_channel"].items():
            route = routes[channel]
            wants = {k: v for k, v in route._asdict().items() if k not in ("channel", "since") and v}
            filters = ", ".join(f"{k}={v}" for k, v in wants.items()) or "everything"
            print(f"  {channel:<11} {n}  {filters:<40} {r['texts'].get(channel, '-')[:70]}")
    bad = sum(r["invalid_messages"] + len(r["channels_over_rate_limit"]) for r in one + many) + (most > 3)
    return one + many, bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1,000 tasks only (CI)")
    parser.add_argument(
        "--channels", type=int, default=20, help="then the burst across this many channels (0: skip it)"
    )
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
    bad = 0
    if args.channels:
        size = 1_000 if args.quick else 10_000
        channel_rows, bad = channels_table(size, min(args.channels, 20), Settings().pace_seconds)
        save("burst_channels", channel_rows, quick=args.quick)
        if bad:
            print(
                f"burst: {bad} problem(s): invalid messages, a channel over Slack's rate or over 3 messages",
                file=sys.stderr,
            )
    return 1 if invalid or bad else 0


if __name__ == "__main__":
    sys.exit(main())
