"""One simulated KPS project: its identity, its running, finished and failed tasks, lifecycle and faults."""

from __future__ import annotations

import hashlib
import heapq
import random
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from kpsbot.kps.models import ACTIONS
from kpsbot.settings import REGION_RE, region_of
from kpsbot.simulator.verify import Credentials

FAULT_KINDS = ("status", "nonjson", "timeout", "reset")
TIMEOUT_FAULT_SECONDS = 30.0
MAX_STARTS_PER_TICK = 10_000  # a clock jump must not stall a request creating millions of tasks
DEFAULT_ERROR = ("KPS.2003", "server is not running")
SERVER_PREFIXES = ("web", "api", "db", "cache", "worker", "batch", "bastion", "gpu")
KEYPAIRS = ("kp-deploy", "kp-ops", "kp-ci", "kp-backup", "kp-admin")
# A long `kpsbot simulate` must not grow without bound; these hold a 30-minute soak at several tasks/s.
MAX_TRANSITIONS = 100_000
MAX_FINISHED = 100_000  # finished tasks whose status is still known; older ones answer 404
MAX_FAILED = 10_000  # rows of the failed-tasks list
REQUEST_LOG_SIZE = 10_000
DEFAULT_PROJECT_ID = "p1"


def derived_project_id(name: str) -> str:
    """The ID a project given by name only gets: the same for the same name, so restarts keep it."""
    return hashlib.sha256(f"kpsbot-sim:{name}".encode()).hexdigest()[:32]


def region_of_name(name: str) -> str | None:
    """The region a project's name starts with (`cn-north-4_dev` -> `cn-north-4`), None if it has none."""
    region = region_of(name)
    return region if REGION_RE.match(region) else None


def planned_faults(n: int, status: int | None, body: Any, kind: str) -> list[dict]:
    """`n` faults of one kind, as `Simulator.fail_next` describes them."""
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; expected one of {', '.join(FAULT_KINDS)}")
    if status is None:
        status = 502 if kind == "nonjson" else 500
    return [{"kind": kind, "status": status, "body": body} for _ in range(n)]


def _sort_key(record: dict) -> tuple[int, str]:
    return int(record["task_time"]), record["task_id"]


class Simulator:
    """The simulated KPS state for one project: running, hidden, finished and failed tasks, plus faults.

    A project has an ID, a name (default: the ID) and a region (default: the name up to the first `_`
    when that is a region, else None). Given a name and no ID, it gets `derived_project_id(name)`.
    `ak`/`sk`/`token` are the account's credentials its server accepts (see `SimulatorServer`).

    Thread-safe. Records handed out are never mutated afterwards, so pages are serialised outside the lock.
    Tasks created at start (`tasks=N`) are the pre-existing snapshot: they are not in `transitions()`,
    and with `rate=0` they stay running until finished explicitly.

    Memory is bounded: the last `max_transitions` transitions and `request_log_size` requests are kept,
    and of the finished tasks the newest `max_finished` statuses and `max_failed` failed rows; an older
    finished task is forgotten (its status is 404), as a real KPS eventually forgets it.
    """

    def __init__(
        self,
        project_id: str | None = None,
        ak: str | None = None,
        sk: str | None = None,
        token: str | None = None,
        tasks: int = 0,
        seed: int | str | None = None,
        rate: float = 0.0,
        finish_after: tuple[float, float] = (5.0, 20.0),
        fail_ratio: float = 0.2,
        clock: Callable[[], float] = time.time,
        max_transitions: int = MAX_TRANSITIONS,
        max_finished: int = MAX_FINISHED,
        max_failed: int = MAX_FAILED,
        request_log_size: int = REQUEST_LOG_SIZE,
        name: str | None = None,
        region: str | None = None,
    ) -> None:
        self.credentials = Credentials(ak, sk, token)
        if project_id is None:
            project_id = derived_project_id(name) if name else DEFAULT_PROJECT_ID
        self.project_id = project_id
        self.name = name or project_id
        self.region = region or region_of_name(self.name)
        self.rate = rate
        self.finish_after = finish_after
        self.fail_ratio = fail_ratio
        self.clock = clock
        self.max_finished = max_finished
        self.max_failed = max_failed
        self._rng = random.Random(seed)
        self._fault_rng = random.Random(None if seed is None else f"faults-{seed}")
        self._lock = threading.RLock()

        self._running: dict[str, dict] = {}
        self._hidden: dict[str, dict] = {}
        self._status: dict[str, tuple[str, str]] = {}  # task_id -> (server_id, task_status)
        self._finished: OrderedDict[str, None] = OrderedDict()  # finished task IDs, oldest first
        # (task_id, task_time) -> failed row, oldest first: a task_id can fail in several runs
        self._failed: OrderedDict[tuple[str, str], dict] = OrderedDict()
        self._transitions: deque[dict] = deque(maxlen=max_transitions)
        self._finish_queue: list[tuple[float, str]] = []  # heap of (finish at, task_id)
        self._finish_at: dict[str, float] = {}
        self._running_sorted: list[dict] | None = None
        self._failed_sorted: list[dict] | None = None

        # faults
        self.delay = 0.0
        self.fault_ratio = 0.0
        self.fault_kinds: tuple[str, ...] = FAULT_KINDS
        self.fault_statuses: tuple[int, ...] = (500, 502, 503)
        self.timeout_seconds = TIMEOUT_FAULT_SECONDS
        self._fail_next: list[dict] = []
        self.requests = 0
        self.request_log: deque[tuple[str, str]] = deque(maxlen=request_log_size)

        now = self.clock()
        self._next_start: float | None = now + 1.0 / rate if rate > 0 else None
        for _ in range(tasks):
            record = self._new_record(task_time_ms=int((now - self._rng.uniform(1, 3600)) * 1000))
            self._insert(record)
            if rate > 0:
                self._schedule(record["task_id"], now + self._rng.uniform(*finish_after))

    def __repr__(self) -> str:
        return (
            f"Simulator(project_id={self.project_id!r}, name={self.name!r}, region={self.region!r}, "
            f"auth={self.credentials.kinds}, running={len(self._running)})"
        )

    # -- tasks --------------------------------------------------------------------------

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _new_record(
        self,
        operate_type: str | None = None,
        server_name: str | None = None,
        keypair_name: str | None = None,
        task_id: str | None = None,
        task_time_ms: int | None = None,
        server_id: str | None = None,
    ) -> dict:
        rng = self._rng
        return {
            "task_id": task_id or self._uuid(),
            "operate_type": operate_type or f"RUNNING_{rng.choice(ACTIONS)}",
            "task_time": str(int(self.clock() * 1000) if task_time_ms is None else int(task_time_ms)),
            "server_name": server_name or f"{rng.choice(SERVER_PREFIXES)}-{rng.randint(1, 99):02d}",
            "server_id": server_id or self._uuid(),
            "keypair_name": keypair_name or rng.choice(KEYPAIRS),
        }

    def _insert(self, record: dict) -> None:
        self._running[record["task_id"]] = record
        self._status[record["task_id"]] = (record["server_id"], record["operate_type"])
        self._running_sorted = None

    def _schedule(self, task_id: str, at: float) -> None:
        self._finish_at[task_id] = at
        heapq.heappush(self._finish_queue, (at, task_id))

    def _start(self, record: dict, at: float) -> dict:
        """Start a run. A task_id that finished before may start again (KPS's task_id is the server's
        ID: a server's key pair can be reset twice); `tasks/{id}` then answers for the new run."""
        task_id = record["task_id"]
        if task_id in self._running or task_id in self._hidden:
            raise ValueError(f"task {task_id} is already running")
        self._finished.pop(task_id, None)  # its status is the new run's now
        self._insert(record)
        self._transitions.append(
            {
                "kind": "started",
                "task_id": task_id,
                "task_time": record["task_time"],
                "outcome": None,
                "at": at,
            }
        )
        return dict(record)

    def add_task(
        self,
        operate_type: str = "RUNNING_RESET",
        server_name: str = "web-01",
        keypair_name: str = "kp",
        task_id: str | None = None,
        task_time_ms: int | None = None,
        server_id: str | None = None,
        finish_in: float | None = None,
    ) -> dict:
        """Start a task now (recorded as a `started` transition); `finish_in` lets the lifecycle end it."""
        with self._lock:
            record = self._new_record(
                operate_type, server_name, keypair_name, task_id, task_time_ms, server_id
            )
            now = self.clock()
            started = self._start(record, now)
            if finish_in is not None:
                self._schedule(record["task_id"], now + finish_in)
            return started

    def finish_task(
        self,
        task_id: str,
        success: bool = True,
        error_code: str = DEFAULT_ERROR[0],
        error_msg: str = DEFAULT_ERROR[1],
    ) -> str:
        """End a running (or hidden) task; a failed one joins the failed list. Returns the new status."""
        with self._lock:
            return self._finish(task_id, success, error_code, error_msg, self.clock())

    def _finish(self, task_id: str, success: bool, error_code: str, error_msg: str, at: float) -> str:
        record = self._running.pop(task_id, None) or self._hidden.pop(task_id, None)
        if record is None:
            raise KeyError(f"task {task_id} is not running")
        self._running_sorted = None
        self._finish_at.pop(task_id, None)
        action = record["operate_type"].rpartition("_")[2] or "RESET"
        status = f"{'SUCCESS' if success else 'FAILED'}_{action}"
        self._status[task_id] = (record["server_id"], status)
        self._finished[task_id] = None
        if not success:
            failed = dict(record, operate_type=f"FAILED_{action}")
            failed.update(task_error_code=error_code, task_error_msg=error_msg)
            self._failed[(task_id, record["task_time"])] = failed
            self._failed_sorted = None
            if len(self._failed) > self.max_failed:
                self._failed.popitem(last=False)
        while len(self._finished) > self.max_finished:
            forgotten, _ = self._finished.popitem(last=False)
            self._status.pop(forgotten, None)
            self._forget_failed(forgotten)
        self._transitions.append(
            {
                "kind": "finished",
                "task_id": task_id,
                "task_time": record["task_time"],
                "outcome": "succeeded" if success else "failed",
                "at": at,
            }
        )
        return status

    def churn(self, count: int) -> dict[str, int]:
        """Finish `count` running tasks (a fail_ratio share of them failed) and start as many new ones."""
        with self._lock:
            now = self.clock()
            victims = self._rng.sample(sorted(self._running), min(count, len(self._running)))
            for task_id in victims:
                self._finish(task_id, self._rng.random() >= self.fail_ratio, *DEFAULT_ERROR, now)
            for _ in range(count):
                self._start(self._new_record(), now)
            return {"finished": len(victims), "started": count}

    def hide_task(self, task_id: str) -> None:
        """Drop a task from the running list while its status stays RUNNING_* (a paging miss)."""
        with self._lock:
            record = self._running.pop(task_id, None)
            if record is None:
                raise KeyError(f"task {task_id} is not in the running list")
            self._hidden[task_id] = record
            self._running_sorted = None

    def remove_task(self, task_id: str) -> None:
        """Forget a task entirely: not listed anywhere, and its status is 404."""
        with self._lock:
            if task_id not in self._status:
                raise KeyError(f"task {task_id} does not exist")
            self._running.pop(task_id, None)
            self._hidden.pop(task_id, None)
            self._finish_at.pop(task_id, None)
            self._status.pop(task_id)
            self._finished.pop(task_id, None)
            self._forget_failed(task_id)
            self._running_sorted = None

    def _forget_failed(self, task_id: str) -> None:
        for key in [key for key in self._failed if key[0] == task_id]:
            del self._failed[key]
            self._failed_sorted = None

    def tick(self, now: float | None = None) -> None:
        """Apply the lifecycle up to `now`: start tasks at `rate` per second, finish the due ones."""
        with self._lock:
            now = self.clock() if now is None else now
            if self.rate > 0:
                interval = 1.0 / self.rate
                if self._next_start is None:  # `rate` was switched on after construction
                    self._next_start = now + interval
                started = 0
                while self._next_start <= now and started < MAX_STARTS_PER_TICK:
                    at = self._next_start
                    record = self._new_record(task_time_ms=int(at * 1000))
                    self._start(record, at)
                    self._schedule(record["task_id"], at + self._rng.uniform(*self.finish_after))
                    self._next_start += interval
                    started += 1
                if self._next_start <= now:  # fell too far behind: skip ahead instead of catching up
                    self._next_start = now + interval
            while self._finish_queue and self._finish_queue[0][0] <= now:
                at, task_id = heapq.heappop(self._finish_queue)
                if self._finish_at.get(task_id) != at:
                    continue  # finished, removed or rescheduled since
                success = self._rng.random() >= self.fail_ratio
                self._finish(task_id, success, *DEFAULT_ERROR, at)

    def _tick_if_alive(self) -> None:
        if self.rate > 0 or self._finish_queue:
            self.tick()

    # -- reads --------------------------------------------------------------------------

    def _sorted_running(self) -> list[dict]:
        if self._running_sorted is None:
            self._running_sorted = sorted(self._running.values(), key=_sort_key)
        return self._running_sorted

    def _sorted_failed(self) -> list[dict]:
        if self._failed_sorted is None:
            self._failed_sorted = sorted(self._failed.values(), key=_sort_key)
        return self._failed_sorted

    def running(self) -> list[dict]:
        with self._lock:
            return [dict(r) for r in self._sorted_running()]

    def failed(self) -> list[dict]:
        with self._lock:
            return [dict(r) for r in self._sorted_failed()]

    def status(self, task_id: str) -> str | None:
        with self._lock:
            entry = self._status.get(task_id)
            return entry[1] if entry else None

    def transitions(self) -> list[dict]:
        with self._lock:
            return [dict(t) for t in self._transitions]

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {
                "running": len(self._running),
                "hidden": len(self._hidden),
                "failed": len(self._failed),
                "known": len(self._status),
            }

    def page(self, which: str, limit: int, offset: int) -> tuple[int, list[dict]]:
        """(total, rows) of `running-tasks` or `failed-tasks`, in (task_time, task_id) order."""
        with self._lock:
            self._tick_if_alive()
            rows = self._sorted_running() if which == "running-tasks" else self._sorted_failed()
            return len(rows), rows[offset : offset + limit]

    def task_status(self, task_id: str) -> dict | None:
        with self._lock:
            self._tick_if_alive()
            entry = self._status.get(task_id)
        if entry is None:
            return None
        return {"server_id": entry[0], "task_id": task_id, "task_status": entry[1]}

    def state(self) -> dict:
        with self._lock:
            self._tick_if_alive()
            return {**self.counts(), "requests": self.requests, "transitions": self.transitions()}

    # -- faults -------------------------------------------------------------------------

    def fail_next(
        self, n: int = 1, status: int | None = None, body: Any = None, kind: str = "status"
    ) -> None:
        """Fail the next `n` API requests as `kind`.

        `status`: that HTTP status (500 by default) with an error JSON body, or `body` when given;
        `nonjson`: an HTML page under `status` (502 by default); `timeout`: no answer for
        `timeout_seconds`, then the normal one; `reset`: the socket closed without an answer.
        """
        faults = planned_faults(n, status, body, kind)
        with self._lock:
            self._fail_next.extend(faults)

    def clear_faults(self) -> None:
        with self._lock:
            self._fail_next.clear()
            self.delay = 0.0
            self.fault_ratio = 0.0

    def _admit(self, method: str, path: str) -> dict | None:
        """Count an API request and decide which fault, if any, it meets."""
        with self._lock:
            self.requests += 1
            self.request_log.append((method, path))
            if self._fail_next:
                return self._fail_next.pop(0)
            if self.fault_ratio > 0 and self._fault_rng.random() < self.fault_ratio:
                kind = self._fault_rng.choice(self.fault_kinds)
                # An HTML page under 200 is the nasty case: nothing but the body says it went wrong.
                statuses = (200, 502) if kind == "nonjson" else self.fault_statuses
                return {"kind": kind, "status": self._fault_rng.choice(statuses), "body": None}
            return None
