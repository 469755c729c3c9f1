"""A small bounded pool of daemon threads for the slow half of a request: KPS calls and replies.

Bolt runs listeners on its own small pool and answers Slack only after `ack()`; keeping KPS
calls off that pool means a burst of slow commands never delays later acks.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_STOP = object()


class WorkerPool:
    """`submit()` never blocks: it returns False when `max_pending` jobs are already waiting."""

    def __init__(self, workers: int = 8, max_pending: int = 500, name: str = "kps-work") -> None:
        self.workers = workers
        self.name = name
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stopping = False

    def start(self) -> None:
        with self._lock:
            if self._threads or self._stopping:
                return
            for number in range(self.workers):
                thread = threading.Thread(target=self._work, name=f"{self.name}-{number}", daemon=True)
                thread.start()
                self._threads.append(thread)

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
        if self._stopping:
            return False
        self.start()
        try:
            self._queue.put_nowait((fn, args, kwargs))
        except queue.Full:
            log.warning("work queue full (%d jobs waiting); refusing a job", self._queue.maxsize)
            return False
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Drop jobs not yet started, let running ones finish for up to `timeout` seconds."""
        self._stopping = True
        dropped = 0
        while True:
            try:
                self._queue.get_nowait()
                dropped += 1
            except queue.Empty:
                break
        if dropped:
            log.info("dropped %d waiting Slack jobs at shutdown", dropped)
        for _ in self._threads:
            try:
                self._queue.put_nowait(_STOP)
            except queue.Full:
                break
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        busy = sum(thread.is_alive() for thread in self._threads)
        if busy:
            log.warning("%d Slack jobs still running at shutdown; abandoning them", busy)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is _STOP:
                return
            fn, args, kwargs = job
            try:
                fn(*args, **kwargs)
            except Exception:  # a job's own errors are its business; keep the worker alive
                log.exception("Slack job %s failed", getattr(fn, "__qualname__", fn))
