"""The background watcher thread: holds the lease, runs a cycle every interval (± jitter), never dies."""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import uuid
from datetime import datetime, timezone

from kpsbot.store import Store
from kpsbot.watch.cycle import Watcher

log = logging.getLogger(__name__)


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class WatcherLoop:
    """Runs `watcher.run_cycle()` in a daemon thread while this process holds the watcher lease.

    Two processes on one database never both post: the lease lasts a few intervals, is
    renewed every iteration and released on a clean stop, so the other takes over at once.
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
    ) -> None:
        self.watcher = watcher
        self.store = store
        self.interval = interval
        self.owner = owner or default_owner()
        self.lease_ttl = lease_ttl if lease_ttl is not None else 3 * interval + 5
        self.jitter = jitter
        self.last_success: datetime | None = None
        self.is_leader = False
        self.cycles = 0
        self._stop = threading.Event()
        self._lease_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> WatcherLoop:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="kpsbot-watcher", daemon=True)
            self._thread.start()
            # A cycle may outlast the lease (a slow KPS, thousands of finishes): the heartbeat keeps
            # the lease ours while this process is alive, so a standby never posts beside us.
            threading.Thread(target=self._heartbeat, name="kpsbot-lease", daemon=True).start()
        return self

    def _heartbeat(self) -> None:
        period = max(self.lease_ttl / 3, 0.2)
        while not self._stop.wait(period):
            with self._lease_lock:
                if not self.is_leader or self._stop.is_set():
                    continue
                try:
                    renewed = self.store.acquire_lease(self.owner, self.lease_ttl)
                except Exception:
                    log.exception("cannot renew the watcher lease")
                    continue
                if not renewed:
                    log.warning("lost the watcher lease (%s)", self.owner)
                    self.is_leader = False

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
        self._release()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def run_once(self) -> None:
        """One iteration: take or renew the lease, and run a cycle if it is ours."""
        with self._lease_lock:
            try:
                leader = self.store.acquire_lease(self.owner, self.lease_ttl)
            except Exception:
                log.exception("cannot take the watcher lease; skipping this cycle")
                leader = False
            if leader != self.is_leader:
                log.info("%s the watcher lease (%s)", "took" if leader else "lost", self.owner)
                self.is_leader = leader
        if not leader:
            return
        try:
            report = self.watcher.run_cycle(self._stop)
        except Exception:
            log.exception("watcher cycle failed; trying again next interval")
            return
        self.cycles += 1
        if report.ok:
            self.last_success = datetime.now(timezone.utc)
        log.info("watcher: %s", report.summary())

    def _run(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            delay = self.interval * (1 + random.uniform(-self.jitter, self.jitter))
            self._stop.wait(max(delay, 0.0))

    def _release(self) -> None:
        with self._lease_lock:
            self._release_locked()

    def _release_locked(self) -> None:
        if not self.is_leader:
            return
        try:
            self.store.release_lease(self.owner)
            log.info("released the watcher lease (%s)", self.owner)
        except Exception:
            log.exception("cannot release the watcher lease; it expires by itself")
        self.is_leader = False
