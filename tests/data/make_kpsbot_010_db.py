"""How `kpsbot-0.1.0.db` was made: run once with kpsbot 0.1.0 (commit f1880fd), never again.

The file is what that release really wrote: a baseline, tasks whose start messages were posted
(their channel and ts are the threads later finishes reply in), a finish delivered, one start and
one finish (with its edit) still pending in the outbox (Slack failed), polls, meta and a lease.
It runs against the 0.1.0 code of this repository, so later releases cannot re-run it; the
upgrade tests read the committed file.

    python tests/data/make_kpsbot_010_db.py tests/data/kpsbot-0.1.0.db
"""

# ruff: noqa: I001 - these are kpsbot 0.1.0's modules (kpsbot.watch.delivery is gone since): sorting
# them by today's layout would be wrong for the code this script runs against.

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slack_sdk import WebClient  # noqa: E402, I001 - 0.1.0 had kpsbot.watch.delivery
from support.fake_slack import FakeSlack  # noqa: E402

from kpsbot.kps.auth import AkSkAuth  # noqa: E402
from kpsbot.kps.client import KpsClient  # noqa: E402
from kpsbot.simulator import Simulator, SimulatorServer  # noqa: E402
from kpsbot.store import Store  # noqa: E402
from kpsbot.watch.cycle import Watcher  # noqa: E402
from kpsbot.watch.delivery import SlackSender, slack_retry_handlers  # noqa: E402

PROJECT = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
CHANNEL = "C0OLDCHAN"


def main(path: str) -> None:
    Path(path).unlink(missing_ok=True)
    now = 1_764_000_000.0
    clock = lambda: now  # noqa: E731
    sim = Simulator(project_id=PROJECT, ak="AK", sk="SK", seed=10, rate=0.0)
    with SimulatorServer(sim) as server, FakeSlack() as slack:
        kps = KpsClient(server.url, PROJECT, AkSkAuth("AK", "SK", PROJECT), retries=0, backoff=0)
        client = WebClient(
            token="xoxb-old",
            base_url=slack.url,
            retry_handlers=slack_retry_handlers(max_wait=1, sleep=lambda s: None, backoff=0),
        )
        store = Store(path)
        watcher = Watcher(
            kps, store, SlackSender(client, CHANNEL), project_id=PROJECT, location="cn-north-4", clock=clock
        )
        old = sim.add_task(server_name="old-01", task_id="task-baseline-1", task_time_ms=1_763_990_000_000)
        watcher.run_cycle()  # baseline
        now += 30
        a = sim.add_task(server_name="web-a", task_id="task-a", task_time_ms=1_764_000_010_000)
        b = sim.add_task(
            operate_type="RUNNING_REPLACE",
            server_name="db-b",
            task_id="task-b",
            task_time_ms=1_764_000_011_000,
        )
        c = sim.add_task(operate_type="RUNNING_UNBIND", server_name="api-c", task_id="task-c")
        watcher.run_cycle()  # three start messages: threads for later
        now += 30
        sim.finish_task(a["task_id"], success=True)
        watcher.run_cycle()  # a finished: reply + edit delivered
        now += 30
        slack.fail_next(10, 500)
        sim.finish_task(b["task_id"], success=False, error_code="KPS.2003", error_msg="server is not running")
        d = sim.add_task(server_name="web-d", task_id="task-d", task_time_ms=1_764_000_100_000)
        watcher.run_cycle()  # b's finish and d's start stay pending: Slack is down
        store.acquire_lease("old-host:123:abcd1234", ttl=60, now=now)
        store.close()
        del old, c, d
    print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1])
