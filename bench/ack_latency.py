"""Ack latency of `/kps-tasks` while KPS is slow, next to a bare Bolt app that only acks.

Both apps run in this process behind the same HTTP server set-up (kpsbot's cheroot
`HttpService`); 200 signed slash commands are sent to each (20 at a time, alternating blocks)
while the KPS simulator delays every answer by 2 s. The number that matters is the ratio:
kpsbot's acks must not queue behind KPS calls.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import AK, PROJECT, ROOT, SK, print_table, save, simulator

sys.path.insert(0, str(ROOT / "tests"))

from slack_bolt import App  # noqa: E402
from slack_sdk import WebClient  # noqa: E402
from support.compose import compose_app  # noqa: E402
from support.fake_slack import FakeSlack  # noqa: E402
from support.slack_requests import SECRET, Bot  # noqa: E402

from kpsbot.services import HttpService  # noqa: E402
from kpsbot.settings import settings_from  # noqa: E402
from kpsbot.slack.server import make_wsgi_app  # noqa: E402
from kpsbot.slack.workers import WorkerPool  # noqa: E402
from kpsbot.store import Store  # noqa: E402


def bare_app(fake: FakeSlack) -> App:
    app = App(client=WebClient(base_url=fake.url, token="xoxb-bench"), signing_secret=SECRET, name="bare")

    @app.command("/kps-tasks")
    def only_ack(ack):  # noqa: ANN001
        ack()

    return app


def kpsbot_app(fake: FakeSlack, kps_url: str, store: Store, work: WorkerPool) -> App:
    """The app as `kpsbot run` builds it (tests/support/compose.py), KPS retries off."""
    settings = settings_from(
        {
            "KPS_ENDPOINT": kps_url,
            "KPS_PROJECT_ID": PROJECT,
            "CLOUD_SDK_AK": AK,
            "CLOUD_SDK_SK": SK,
            "SLACK_BOT_TOKEN": "xoxb-bench",
            "SLACK_SIGNING_SECRET": SECRET,
            "SLACK_API_URL": fake.url,
        }
    )
    return compose_app(settings, store, work)


def fire(bot: Bot, count: int, concurrency: int) -> list[float]:
    with ThreadPoolExecutor(concurrency) as pool:
        answers = list(pool.map(lambda n: bot.command("", name=f"bench{n}"), range(count)))
    failed = [a.status for a in answers if a.status != 200]
    if failed:
        raise SystemExit(f"{len(failed)} commands failed: {failed[:5]}")
    return [a.seconds for a in answers]


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]


def run(commands: int, delay: float, concurrency: int) -> dict:
    work = WorkerPool()
    work.start()
    with (
        simulator(tasks=50, delay=delay) as kps_url,
        FakeSlack() as fake,
        tempfile.TemporaryDirectory() as tmp,
        Store(Path(tmp) / "ack.db") as store,
    ):
        servers = {}
        apps = (("bare Bolt (ack only)", bare_app(fake)), ("kpsbot", kpsbot_app(fake, kps_url, store, work)))
        for name, app in apps:
            http = HttpService(make_wsgi_app(app, lambda: {"status": "ok"}), "127.0.0.1", 0)
            http.start()
            servers[name] = (http, Bot(f"http://127.0.0.1:{http.port}", None, fake))
        latencies: dict[str, list[float]] = {name: [] for name in servers}
        block = max(commands // 4, 1)
        try:
            for _, bot in servers.values():  # warm up connections and code paths
                fire(bot, concurrency, concurrency)
            while min(len(v) for v in latencies.values()) < commands:
                for name, (_, bot) in servers.items():
                    latencies[name] += fire(bot, min(block, commands - len(latencies[name])), concurrency)
            time.sleep(0.1)
        finally:
            for http, _ in servers.values():
                http.stop(3)
            work.stop(1)
    rows = {
        name: {"median_ms": statistics.median(v) * 1000, "p99_ms": p99(v) * 1000, "max_ms": max(v) * 1000}
        for name, v in latencies.items()
    }
    bare, ours = rows["bare Bolt (ack only)"], rows["kpsbot"]
    return {
        "commands": commands,
        "kps_delay_s": delay,
        "concurrency": concurrency,
        **{name.split()[0]: row for name, row in rows.items()},
        "ratio_median": ours["median_ms"] / bare["median_ms"],
        "ratio_p99": ours["p99_ms"] / bare["p99_ms"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="40 commands instead of 200")
    parser.add_argument("--commands", type=int, default=200)
    parser.add_argument("--delay", type=float, default=2.0, help="KPS delay per request, seconds")
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    # Replies still queued when the simulator stops fail to reach it; that is not what is measured.
    logging.getLogger("kpsbot.slack").setLevel(logging.CRITICAL)
    result = run(40 if args.quick else args.commands, args.delay, args.concurrency)
    print_table(
        f"Ack latency, {result['commands']} signed /kps-tasks commands, KPS delayed {args.delay:g} s",
        ["app", "median ms", "p99 ms", "max ms"],
        [
            [name, r["median_ms"], r["p99_ms"], r["max_ms"]]
            for name, r in (("bare Bolt (ack only)", result["bare"]), ("kpsbot", result["kpsbot"]))
        ],
    )
    print(f"kpsbot / bare: median x{result['ratio_median']:.2f}, p99 x{result['ratio_p99']:.2f}")
    save("ack_latency", result, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
