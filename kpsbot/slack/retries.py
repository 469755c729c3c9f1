"""Slack re-sends a request it thinks went unanswered (`X-Slack-Retry-Num`); answer each only once."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable


class RecentKeys:
    """A thread-safe set of recently seen keys that forgets them after `ttl` seconds."""

    def __init__(
        self, ttl: float = 600.0, max_size: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.max_size = max_size
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, key: str) -> bool:
        """Record `key`; True when it was not seen within the last `ttl` seconds."""
        now = self._clock()
        with self._lock:
            while self._seen:
                oldest, when = next(iter(self._seen.items()))
                if now - when < self.ttl:
                    break
                del self._seen[oldest]
            if key in self._seen:
                return False
            while len(self._seen) >= self.max_size:
                self._seen.popitem(last=False)
            self._seen[key] = now
            return True


def request_key(body: dict) -> str | None:
    """What identifies one user interaction across Slack's retries: its trigger_id."""
    key = body.get("trigger_id") if isinstance(body, dict) else None
    return key if isinstance(key, str) and key else None
