"""A local KPS task API (SPEC §1) with signature checks, a task lifecycle and fault injection."""

from __future__ import annotations

import heapq
import hmac
import json
import random
import re
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TextIO
from urllib.parse import parse_qsl, unquote, urlsplit

from kpsbot.kps.auth import (
    DATE_FORMAT,
    canonical_request,
    parse_authorization,
    signature,
    string_to_sign,
)

ACTIONS = ("RESET", "REPLACE", "UNBIND")
FAULT_KINDS = ("status", "nonjson", "timeout", "reset")
MAX_LIMIT = 1000
CLOCK_SKEW = 15 * 60  # seconds of X-Sdk-Date drift the API gateway tolerates
TIMEOUT_FAULT_SECONDS = 30.0
MAX_STARTS_PER_TICK = 10_000  # a clock jump must not stall a request creating millions of tasks
DEFAULT_ERROR = ("KPS.2003", "server is not running")
SERVER_PREFIXES = ("web", "api", "db", "cache", "worker", "batch", "bastion", "gpu")
KEYPAIRS = ("kp-deploy", "kp-ops", "kp-ci", "kp-backup", "kp-admin")
STATUS_BODIES = {
    400: ("KPS.0005", "Invalid request"),
    401: ("APIGW.0301", "Incorrect IAM authentication information: injected fault"),
    403: ("APIGW.0302", "The IAM user is not authorized to access the API"),
    404: ("KPS.0004", "Not found"),
    429: ("APIG.0308", "The request is throttled"),
    500: ("KPS.0001", "Internal server error"),
    502: ("APIG.0202", "Backend unavailable"),
    503: ("APIG.0201", "Backend unavailable"),
    504: ("APIG.0203", "Backend timeout"),
}
NONJSON_PAGE = (
    b"<html><head><title>502 Bad Gateway</title></head>"
    b"<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
)
API_PATH = re.compile(
    r"^/v3/(?P<project>[^/]+)/(?:(?P<list>running-tasks|failed-tasks)|tasks/(?P<task>[^/]+))/?$"
)
CONTROL_TASK_PATH = re.compile(r"^/_sim/tasks/(?P<task>[^/]+)/(?P<verb>finish|hide|remove)$")
ADD_TASK_FIELDS = (
    "operate_type",
    "server_name",
    "keypair_name",
    "task_id",
    "task_time_ms",
    "server_id",
    "finish_in",
)


def _sort_key(record: dict) -> tuple[int, str]:
    return int(record["task_time"]), record["task_id"]


class Simulator:
    """The simulated KPS state for one project: running, hidden, finished and failed tasks, plus faults.

    Thread-safe. Records handed out are never mutated afterwards, so pages are serialised outside the lock.
    Tasks created at start (`tasks=N`) are the pre-existing snapshot: they are not in `transitions()`,
    and with `rate=0` they stay running until finished explicitly.
    """

    def __init__(
        self,
        project_id: str = "p1",
        ak: str | None = None,
        sk: str | None = None,
        token: str | None = None,
        tasks: int = 0,
        seed: int | str | None = None,
        rate: float = 0.0,
        finish_after: tuple[float, float] = (5.0, 20.0),
        fail_ratio: float = 0.2,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if (ak is None) != (sk is None):
            raise ValueError("set both ak and sk, or neither")
        self.project_id = project_id
        self._ak = ak
        self._sk = sk
        self._token = token
        self.rate = rate
        self.finish_after = finish_after
        self.fail_ratio = fail_ratio
        self.clock = clock
        self._rng = random.Random(seed)
        self._fault_rng = random.Random(None if seed is None else f"faults-{seed}")
        self._lock = threading.RLock()

        self._running: dict[str, dict] = {}
        self._hidden: dict[str, dict] = {}
        self._status: dict[str, tuple[str, str]] = {}  # task_id -> (server_id, task_status)
        self._failed: list[dict] = []
        self._transitions: list[dict] = []
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
        self.request_log: list[tuple[str, str]] = []

        now = self.clock()
        self._next_start: float | None = now + 1.0 / rate if rate > 0 else None
        for _ in range(tasks):
            record = self._new_record(task_time_ms=int((now - self._rng.uniform(1, 3600)) * 1000))
            self._insert(record)
            if rate > 0:
                self._schedule(record["task_id"], now + self._rng.uniform(*finish_after))

    def __repr__(self) -> str:
        auth = [name for name, value in (("aksk", self._ak), ("token", self._token)) if value]
        return f"Simulator(project_id={self.project_id!r}, auth={auth}, running={len(self._running)})"

    # -- auth configuration (read by the HTTP handler) ---------------------------------

    @property
    def auth_required(self) -> bool:
        return bool(self._ak or self._token)

    def check_token(self, value: str) -> bool:
        return bool(self._token) and hmac.compare_digest(value.encode(), self._token.encode())

    @property
    def aksk_enabled(self) -> bool:
        return self._sk is not None

    def check_access_key(self, value: str) -> bool:
        return bool(self._ak) and hmac.compare_digest(value.encode(), self._ak.encode())

    def expected_signature(self, to_sign: str) -> str:
        return signature(self._sk or "", to_sign)

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
        if record["task_id"] in self._status:
            raise ValueError(f"task {record['task_id']} already exists")
        self._insert(record)
        self._transitions.append({"kind": "started", "task_id": record["task_id"], "outcome": None, "at": at})
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
        if not success:
            failed = dict(record, operate_type=f"FAILED_{action}")
            failed.update(task_error_code=error_code, task_error_msg=error_msg)
            self._failed.append(failed)
            self._failed_sorted = None
        self._transitions.append(
            {
                "kind": "finished",
                "task_id": task_id,
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
            self._failed = [row for row in self._failed if row["task_id"] != task_id]
            self._running_sorted = self._failed_sorted = None

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
            self._failed_sorted = sorted(self._failed, key=_sort_key)
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
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {', '.join(FAULT_KINDS)}")
        with self._lock:
            if status is None:
                status = 502 if kind == "nonjson" else 500
            self._fail_next.extend({"kind": kind, "status": status, "body": body} for _ in range(n))

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


# -- HTTP ---------------------------------------------------------------------------------


def _error(code: str, message: str) -> dict:
    return {"error_code": code, "error_msg": message}


class AuthFailure(Exception):
    """A request the API gateway would reject with 401 APIGW.0301."""


def _header_value(raw: str) -> str:
    # http.server decodes headers as latin-1; the signer hashed the UTF-8 text.
    try:
        return raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return raw


def verify_request(
    sim: Simulator,
    method: str,
    raw_path: str,
    headers: Any,
    body: bytes,
) -> None:
    """Raise AuthFailure unless the request carries an accepted token or a valid AK/SK signature."""
    project = headers.get("X-Project-Id")
    if project is not None and project != sim.project_id:
        raise AuthFailure("X-Project-Id does not match the project of the credentials")
    if not sim.auth_required:
        return
    token = headers.get("X-Auth-Token")
    if token is not None:
        if not sim.check_token(token):
            raise AuthFailure("the token is invalid or has expired")
        return
    authorization = headers.get("Authorization")
    if authorization is None:
        raise AuthFailure("no Authorization or X-Auth-Token header")
    if not sim.aksk_enabled:
        raise AuthFailure("AK/SK authentication is not enabled")
    fields = parse_authorization(authorization)
    if fields is None:
        raise AuthFailure("malformed Authorization header")
    if not sim.check_access_key(fields["Access"]):
        raise AuthFailure("unknown access key")
    names = fields["SignedHeaders"].split(";")
    if names != sorted(names) or any(name != name.lower() or not name for name in names):
        raise AuthFailure("SignedHeaders must be lower-case and sorted")
    if not {"host", "x-sdk-date"} <= set(names):
        raise AuthFailure("host and x-sdk-date must be signed")
    signed = {}
    for name in names:
        value = headers.get(name)
        if value is None:
            raise AuthFailure(f"signed header {name} is missing")
        signed[name] = _header_value(value)
    sdk_date = signed["x-sdk-date"]
    try:
        when = datetime.strptime(sdk_date, DATE_FORMAT).replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        raise AuthFailure("X-Sdk-Date is not YYYYMMDDTHHMMSSZ") from None
    if abs(sim.clock() - when) > CLOCK_SKEW:
        raise AuthFailure("X-Sdk-Date is more than 15 minutes away from the server time")
    parts = urlsplit(raw_path)
    canonical = canonical_request(
        method, parts.path, parse_qsl(parts.query, keep_blank_values=True), signed, names, body
    )
    expected = sim.expected_signature(string_to_sign(sdk_date, canonical))
    if not hmac.compare_digest(expected, fields["Signature"]):
        raise AuthFailure("the signature does not match")


def _int_param(query: dict[str, str], name: str, default: int, low: int, high: int | None) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not re.fullmatch(r"\d{1,9}", raw) or not (low <= int(raw) and (high is None or int(raw) <= high)):
        bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise ValueError(f"Invalid {name} {raw!r}: must be an integer {bound}")
    return int(raw)


class BackgroundHTTPServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer on a background thread that also closes kept-alive connections on stop."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def track(self, conn: socket.socket, open_: bool) -> None:
        with self._conn_lock:
            (self._connections.add if open_ else self._connections.discard)(conn)

    def start_background(self, name: str) -> None:
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True
        )
        self._thread.start()

    def stop_background(self) -> None:
        if self.stopping.is_set():
            return
        self.stopping.set()
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
        with self._conn_lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.server_close()

    def pause(self, seconds: float) -> bool:
        """Sleep up to `seconds`, waking early when the server stops; True if it is stopping."""
        return self.stopping.wait(seconds) if seconds > 0 else self.stopping.is_set()

    def handle_error(self, request, client_address) -> None:  # noqa: ANN001 - socketserver's signature
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError, OSError)):
            super().handle_error(request, client_address)


class QuietHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler with JSON helpers and no access log."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: Nagle would add ~40 ms each
    timeout = 300  # an idle kept-alive connection is dropped after this
    server: BackgroundHTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        pass

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def send_body(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status: int, payload: Any, headers: Iterable[tuple[str, str]] = ()) -> None:
        self.send_body(status, json.dumps(payload, separators=(",", ":")).encode(), headers=headers)

    def reset_connection(self) -> None:
        """Close the socket with an RST and no answer."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass


class SimulatorHandler(QuietHandler):
    sim: Simulator  # set on the subclass made per server

    def send_json(self, status: int, payload: Any, headers: Iterable[tuple[str, str]] = ()) -> None:
        super().send_json(status, payload, [("X-Request-Id", uuid.uuid4().hex), *headers])

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        try:
            body = self.read_body()
            path = urlsplit(self.path).path
            if path.startswith("/_sim/"):
                self._control(path, body)
            else:
                self._api(path, body)
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    # -- the KPS API ----------------------------------------------------------------

    def _api(self, path: str, body: bytes) -> None:
        sim = self.sim
        fault = sim._admit(self.command, path)
        if self.server.pause(sim.delay):
            return
        if fault is not None and self._fault(fault):
            return
        try:
            verify_request(sim, self.command, self.path, self.headers, body)
        except AuthFailure as exc:
            self.send_json(401, _error("APIGW.0301", f"Incorrect IAM authentication information: {exc}"))
            return
        match = API_PATH.match(path)
        if self.command != "GET" or match is None:
            self.send_json(
                404,
                _error("APIGW.0101", "The API does not exist or has not been published in the environment"),
            )
            return
        if unquote(match["project"]) != sim.project_id:
            self.send_json(404, _error("KPS.0004", f"project {unquote(match['project'])} does not exist"))
            return
        if match["task"]:
            task_id = unquote(match["task"])
            status = sim.task_status(task_id)
            if status is None:
                self.send_json(404, _error("KPS.0004", f"task {task_id} does not exist"))
            else:
                self.send_json(200, status)
            return
        query = dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))
        try:
            limit = _int_param(query, "limit", MAX_LIMIT, 1, MAX_LIMIT)
            offset = _int_param(query, "offset", 0, 0, None)
        except ValueError as exc:
            self.send_json(400, _error("KPS.0005", str(exc)))
            return
        total, rows = sim.page(match["list"], limit, offset)
        self.send_json(200, {"total": total, "tasks": rows})

    def _fault(self, fault: dict) -> bool:
        """Answer with the fault; False when the request should then be served normally."""
        kind = fault["kind"]
        if kind == "reset":
            self.reset_connection()
            return True
        if kind == "timeout":
            return self.server.pause(self.sim.timeout_seconds)
        if kind == "nonjson":
            self.send_body(fault["status"], NONJSON_PAGE, "text/html", [("X-Request-Id", uuid.uuid4().hex)])
            return True
        status, body = fault["status"], fault["body"]
        if body is None:
            body = _error(*STATUS_BODIES.get(status, ("KPS.0001", f"injected HTTP {status}")))
        if isinstance(body, (bytes, str)):
            raw = body.encode() if isinstance(body, str) else body
            self.send_body(status, raw, headers=[("X-Request-Id", uuid.uuid4().hex)])
        else:
            self.send_json(status, body)
        return True

    # -- control endpoints (no auth, not counted) -------------------------------------

    def _control(self, path: str, body: bytes) -> None:
        sim = self.sim
        try:
            args = json.loads(body) if body.strip() else {}
            if not isinstance(args, dict):
                raise ValueError("the body must be a JSON object")
        except ValueError as exc:
            self.send_json(400, {"error": f"bad JSON body: {exc}"})
            return
        try:
            if path == "/_sim/state" and self.command == "GET":
                self.send_json(200, sim.state())
            elif path == "/_sim/tasks" and self.command == "POST":
                unknown = set(args) - set(ADD_TASK_FIELDS)
                if unknown:
                    raise ValueError(f"unknown fields: {', '.join(sorted(unknown))}")
                self.send_json(200, sim.add_task(**args))
            elif path == "/_sim/churn" and self.command == "POST":
                self.send_json(200, sim.churn(int(args.get("count", 1))))
            elif path == "/_sim/tick" and self.command == "POST":
                sim.tick(args.get("now"))
                self.send_json(200, sim.counts())
            elif path == "/_sim/faults" and self.command == "POST":
                self.send_json(200, self._set_faults(args))
            elif (match := CONTROL_TASK_PATH.match(path)) and self.command == "POST":
                task_id = unquote(match["task"])
                if match["verb"] == "finish":
                    status = sim.finish_task(
                        task_id,
                        success=bool(args.get("success", True)),
                        error_code=args.get("error_code", DEFAULT_ERROR[0]),
                        error_msg=args.get("error_msg", DEFAULT_ERROR[1]),
                    )
                else:
                    getattr(sim, f"{match['verb']}_task")(task_id)
                    status = sim.status(task_id)
                self.send_json(200, {"task_id": task_id, "task_status": status})
            else:
                self.send_json(404, {"error": f"no control endpoint {self.command} {path}"})
        except KeyError as exc:
            self.send_json(404, {"error": str(exc.args[0]) if exc.args else "not found"})
        except (TypeError, ValueError) as exc:
            self.send_json(400, {"error": str(exc)})

    def _set_faults(self, args: dict) -> dict:
        sim = self.sim
        if "delay" in args:
            sim.delay = float(args["delay"])
        if "fault_ratio" in args:
            sim.fault_ratio = float(args["fault_ratio"])
        if "fault_kinds" in args:
            kinds = tuple(args["fault_kinds"])
            if not set(kinds) <= set(FAULT_KINDS):
                raise ValueError(f"fault_kinds must be among {', '.join(FAULT_KINDS)}")
            sim.fault_kinds = kinds
        if args.get("clear"):
            sim.clear_faults()
        if args.get("fail_next"):
            sim.fail_next(
                int(args["fail_next"]),
                status=int(args["status"]) if "status" in args else None,
                body=args.get("body"),
                kind=args.get("kind", "status"),
            )
        return {"delay": sim.delay, "fault_ratio": sim.fault_ratio, "fault_kinds": list(sim.fault_kinds)}


class SimulatorServer:
    """Serves a Simulator over HTTP on a background thread; also a context manager."""

    def __init__(self, sim: Simulator, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sim = sim
        self.host = host
        self.port = port
        self._httpd: BackgroundHTTPServer | None = None

    def start(self) -> None:
        if self._httpd is not None:
            return
        handler = type("BoundSimulatorHandler", (SimulatorHandler,), {"sim": self.sim})
        self._httpd = BackgroundHTTPServer((self.host, self.port), handler)
        self.port = self._httpd.server_address[1]
        self._httpd.start_background("kps-simulator")

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.stop_background()
            self._httpd = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> SimulatorServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(host: str, port: int, sim: Simulator, out: TextIO | None = None) -> None:
    """Run the simulator until Ctrl-C or SIGTERM, ticking its lifecycle once a second."""
    out = out or sys.stdout
    stop = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server = SimulatorServer(sim, host, port)
    server.start()
    try:
        running = sim.counts()["running"]
        print(
            f"KPS simulator listening on {server.url} (project {sim.project_id}, {running} tasks)",
            file=out,
            flush=True,
        )
        while not stop.wait(1.0):
            sim.tick()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
