"""The background watcher thread: holds the lease, runs a cycle every interval (± jitter), never dies."""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable

from kpsbot.store import Store
from kpsbot.watch.cycle import CycleReport, Watcher

log = logging.getLogger(__name__)

SEND_MARGIN = 2.0  # seconds of lease a send needs left: a standby cannot take over mid-send
# The least time between two cycles, as a share of the interval: a cycle that overran (KPS timing
# out, slow pages) is not followed by the next poll at once, and a delivery that works off a long
# queue stops this much before the next poll is due.
PAUSE = 0.1


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"


class Lease:
    """This process's hold on the watcher lease in the database, fenced by its generation.

    The lease lasts a few intervals, is renewed every iteration (and by a heartbeat during a long
    cycle) and released on a clean stop. `valid()` is asked before every send: a process whose
    lease expired or was taken over stops posting at once, even in the middle of a cycle.
    """

    def __init__(self, store: Store, ttl: float, owner: str | None = None) -> None:
        self.store = store
        self.ttl = ttl
        self.owner = owner or default_owner()
        self.generation: int | None = None
        self._lock = threading.Lock()

    @property
    def held(self) -> bool:
        return self.generation is not None

    def acquire(self) -> bool:
        """Take or renew the lease; False (and not held) when another process holds it."""
        with self._lock:
            try:
                generation = self.store.acquire_lease(self.owner, self.ttl)
            except Exception:
                log.exception("cannot take the watcher lease")
                generation = None
            if self.generation is not None and generation != self.generation:
                log.warning("lost the watcher lease (%s)", self.owner)
            elif self.generation is None and generation is not None:
                log.info("took the watcher lease (%s)", self.owner)
            self.generation = generation
            return generation is not None

    def renew(self) -> None:
        """The heartbeat: renew only a lease we hold."""
        if self.generation is not None:
            self.acquire()

    def valid(self) -> bool:
        generation = self.generation
        if generation is None:
            return False
        try:
            return self.store.holds_lease(self.owner, generation, margin=SEND_MARGIN)
        except Exception:
            log.exception("cannot check the watcher lease")
            return False

    def release(self) -> None:
        with self._lock:
            if self.generation is None:
                return
            try:
                self.store.release_lease(self.owner)
                log.info("released the watcher lease (%s)", self.owner)
            except Exception:
                log.exception("cannot release the watcher lease; it expires by itself")
            self.generation = None


class WatcherLoop:
    """Runs `watcher.run_cycle()` in a daemon thread while this process holds the watcher lease.

    Two processes on one database never both post: only the lease holder runs cycles, and every
    send checks that the lease is still ours.
    """

    def __init__(
        self,
        watcher: Watcher,
        store: Store,
        *,
        interval: float,
        owner: str | None = None,
        lease_ttl: float | None = None,
        jitter: float = 0.1,
        max_cycles: int | None = None,
        on_cycle: Callable[[CycleReport], None] | None = None,
    ) -> None:
        self.watcher = watcher
        self.store = store
        self.interval = interval
        self.lease = Lease(store, lease_ttl if lease_ttl is not None else 3 * interval + 5, owner)
        self.jitter = jitter
        self.max_cycles = max_cycles
        self.on_cycle = on_cycle
        self.cycles = 0
        self.done = threading.Event()  # set after `max_cycles` cycles
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def owner(self) -> str:
        return self.lease.owner

    @property
    def is_leader(self) -> bool:
        return self.lease.held

    def start(self) -> WatcherLoop:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="kpsbot-watcher", daemon=True)
            self._thread.start()
            # A cycle may outlast the lease (a slow KPS, thousands of finishes): the heartbeat keeps
            # the lease ours while this process is alive, so a standby never posts beside us.
            threading.Thread(target=self._heartbeat, name="kpsbot-lease", daemon=True).start()
        return self

    def _heartbeat(self) -> None:
        period = max(self.lease.ttl / 3, 0.2)
        while not self._stop.wait(period):
            self.lease.renew()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current cycle (waiting up to `timeout`) and release the lease."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout / 2)
            if self._thread.is_alive():
                # Don't return between a send and its record if we can help it: the store may close
                # next, and an entry Slack accepted but still `pending` would be posted again after a
                # restart. The wait is bounded so the process still stops in time (SPEC: 10 s).
                if not self.watcher.wait_idle(timeout / 2):
                    log.warning(
                        "a Slack call was still in flight at shutdown; if Slack accepted it, it will be "
                        "posted again after the restart"
                    )
                log.warning("watcher cycle still running after %.0f s; leaving it to finish", timeout)
                return  # releasing now could let another process post while this one still does
        self.lease.release()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def run_once(self, period: float | None = None) -> CycleReport | None:
        """One iteration: take or renew the lease, and run a cycle if it is ours, its delivery
        bounded by `period` (the interval unless given)."""
        if not self.lease.acquire():
            return None
        try:
            period = self.interval if period is None else period
            report = self.watcher.run_cycle(self._stop, self.lease.valid, period=period)
        except Exception:
            log.exception("watcher cycle failed; trying again next interval")
            return None
        self.cycles += 1
        log.info("watcher: %s", report.summary())
        if self.on_cycle is not None:
            self.on_cycle(report)
        return report

    def _run(self) -> None:
        while not self._stop.is_set():
            # One cycle per interval, counted from the cycle's start: a delivery that works off a
            # long queue ends a pause before the next poll is due, and a cycle that overran is
            # followed by the pause only.
            begun = time.monotonic()
            delay = self.interval * (1 + random.uniform(-self.jitter, self.jitter))
            pause = self.interval * PAUSE
            self.run_once(period=delay - pause)
            if self.max_cycles is not None and self.cycles >= self.max_cycles:
                self.done.set()
                return
            self._stop.wait(max(begun + delay - time.monotonic(), pause))
