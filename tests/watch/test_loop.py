"""The background watcher loop: lease between two processes, survives errors, stops cleanly."""

from __future__ import annotations

import threading
import time

from kpsbot.store import Store
from kpsbot.watch.loop import PAUSE, WatcherLoop
from kpsbot.watch.plan import Route

from .conftest import CHANNEL, build_watcher, slack_sender


class CountingWatcher:
    def __init__(self, fail: bool = False) -> None:
        self.cycles = 0
        self.fail = fail

    def run_cycle(self, stop=None, may_send=None, period=None):
        self.cycles += 1
        if self.fail:
            raise RuntimeError("boom")
        from kpsbot.watch.cycle import CycleReport

        return CycleReport(())

    def wait_idle(self, timeout=None) -> bool:
        return True


def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_only_the_lease_holder_runs_cycles_and_the_other_takes_over(tmp_path):
    path = tmp_path / "k.db"
    with Store(path) as store_a, Store(path) as store_b:
        wa, wb = CountingWatcher(), CountingWatcher()
        a = WatcherLoop(wa, store_a, interval=0.02, owner="a", lease_ttl=5).start()
        wait_until(lambda: wa.cycles >= 2)
        b = WatcherLoop(wb, store_b, interval=0.02, owner="b", lease_ttl=5).start()
        wait_until(lambda: wa.cycles >= 6)
        assert wb.cycles == 0 and a.is_leader and not b.is_leader
        a.stop()
        wait_until(lambda: wb.cycles >= 2)  # a clean stop releases the lease at once
        assert b.is_leader and a.cycles >= 6
        b.stop()
        assert store_a.lease_holder() is None


def test_expired_lease_is_taken_over(tmp_path):
    path = tmp_path / "k.db"
    with Store(path) as store:
        assert store.acquire_lease("crashed", ttl=0.2)
        watcher = CountingWatcher()
        loop = WatcherLoop(watcher, store, interval=0.02, owner="b").start()
        wait_until(lambda: watcher.cycles >= 1)
        loop.stop()


def test_a_failing_cycle_does_not_kill_the_thread(tmp_path, caplog):
    with Store(tmp_path / "k.db") as store:
        watcher = CountingWatcher(fail=True)
        loop = WatcherLoop(watcher, store, interval=0.01, owner="a").start()
        wait_until(lambda: watcher.cycles >= 3)
        assert loop.running and "boom" in caplog.text
        loop.stop()
        assert not loop.running


class SlowWatcher(CountingWatcher):
    """A cycle that takes much longer than the lease."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def run_cycle(self, stop=None, may_send=None, period=None):
        report = super().run_cycle(stop)
        time.sleep(self.seconds)
        return report


class TimedWatcher(CountingWatcher):
    """Records when each cycle began and the period it was given; each takes `seconds`."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.calls: list[tuple[float, float | None]] = []

    def run_cycle(self, stop=None, may_send=None, period=None):
        self.calls.append((time.monotonic(), period))
        time.sleep(self.seconds)
        return super().run_cycle(stop, may_send, period)


def test_cycles_start_every_interval_and_a_cycle_that_overran_is_followed_by_a_pause(tmp_path):
    with Store(tmp_path / "k.db") as store:
        quick = TimedWatcher(0.01)
        loop = WatcherLoop(quick, store, interval=0.2, jitter=0).start()
        wait_until(lambda: quick.cycles >= 4)
        loop.stop()
        slow = TimedWatcher(0.5)  # KPS timing out: every cycle takes longer than the interval
        loop = WatcherLoop(slow, store, interval=0.2, jitter=0).start()
        wait_until(lambda: slow.cycles >= 3)
        loop.stop()
    starts = [at for at, _ in quick.calls]
    assert all(0.15 < b - a < 1.0 for a, b in zip(starts, starts[1:])), starts  # from start to start
    # Delivery is given the interval less the pause, so it ends before the next poll is due.
    assert {period for _, period in quick.calls} == {0.2 - 0.2 * PAUSE}
    starts = [at for at, _ in slow.calls]
    assert all(b - a >= 0.5 + 0.9 * 0.2 * PAUSE for a, b in zip(starts, starts[1:])), starts


def test_a_cycle_longer_than_the_lease_keeps_the_lease(tmp_path):
    path = tmp_path / "k.db"
    with Store(path) as store_a, Store(path) as store_b:
        slow = SlowWatcher(1.5)
        a = WatcherLoop(slow, store_a, interval=0.05, owner="a", lease_ttl=0.3).start()
        wait_until(lambda: slow.cycles >= 1)
        other = CountingWatcher()
        b = WatcherLoop(other, store_b, interval=0.05, owner="b", lease_ttl=0.3).start()
        time.sleep(1.0)  # three lease lifetimes, all inside a's first cycle
        assert other.cycles == 0 and store_a.lease_holder() == "a"
        b.stop()
        a.stop(timeout=5)


class SlowSlack:
    """Slack whose chat.postMessage takes `seconds`; `posting` is set once a post is under way."""

    def __init__(self, sender, seconds: float) -> None:
        self.sender, self.seconds = sender, seconds
        self.posting = threading.Event()

    def post(self, channel, message, *, thread_ts=None, broadcast=False):
        self.posting.set()
        time.sleep(self.seconds)
        return self.sender.post(channel, message, thread_ts=thread_ts, broadcast=broadcast)

    def update(self, channel, ts, message):
        self.sender.update(channel, ts, message)


def test_stop_never_leaves_a_delivery_between_send_and_record(sim, kps, slack, tmp_path):
    path = tmp_path / "k.db"
    with Store(path) as store:
        build_watcher(kps, store).run_cycle()  # the baseline, quietly
        for i in range(3):
            sim.add_task(server_name=f"web-{i}")
        sender = SlowSlack(slack_sender(slack), seconds=0.5)
        watcher = build_watcher(kps, store, senders={"*": sender}, routes=[Route(CHANNEL)])
        loop = WatcherLoop(watcher, store, interval=60, owner="a").start()
        assert sender.posting.wait(5)
        loop.stop(timeout=2)  # longer than the send in flight, shorter than the other two sends
        # Whatever reached Slack is recorded as sent before stop returns, and nothing more is sent.
        sent = store.outbox_entries("sent")
        assert len(sent) == len(slack.calls_to("chat.postMessage")) == 1
        time.sleep(0.7)
        assert len(slack.calls_to("chat.postMessage")) == 1 and len(store.outbox_entries("pending")) == 2


class TakeoverSlack:
    """Slack, and while the first post is under way another process takes the watcher lease over
    (this process's lease ran out: a long pause, a suspended VM)."""

    def __init__(self, sender, store_b) -> None:
        self.sender, self.store_b = sender, store_b
        self.posts = 0

    def post(self, channel, message, *, thread_ts=None, broadcast=False):
        self.posts += 1
        if self.posts == 1:
            self.store_b.conn.execute("update lease set expires_at = 0")
            assert self.store_b.acquire_lease("b", ttl=60) is not None
        return self.sender.post(channel, message, thread_ts=thread_ts, broadcast=broadcast)

    def update(self, channel, ts, message):
        self.sender.update(channel, ts, message)


def test_a_process_that_lost_the_lease_stops_posting_before_its_next_send(sim, kps, slack, tmp_path):
    path = tmp_path / "k.db"
    with Store(path) as store, Store(path) as store_b:
        build_watcher(kps, store).run_cycle()  # the baseline, quietly
        for i in range(3):
            sim.add_task(server_name=f"web-{i}")
        sender = TakeoverSlack(slack_sender(slack), store_b)
        watcher = build_watcher(kps, store, senders={"*": sender}, routes=[Route(CHANNEL)])
        loop = WatcherLoop(watcher, store, interval=60, owner="a")
        loop.run_once()
        assert len(slack.calls_to("chat.postMessage")) == 1  # the send under way when the lease went
        assert len(store.outbox_entries("pending")) == 2  # left to the new holder, not posted twice
        assert not loop.lease.valid() and store.lease_holder() == "b"
        loop.run_once()  # the next iteration does not get the lease back
        assert len(slack.calls_to("chat.postMessage")) == 1 and not loop.is_leader
