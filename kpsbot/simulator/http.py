"""The simulator over HTTP: the KPS task API (SPEC §1), control endpoints under /_sim/, and `serve`."""

from __future__ import annotations

import json
import re
import signal
import sys
import threading
import uuid
from collections.abc import Iterable
from typing import Any, TextIO
from urllib.parse import parse_qsl, unquote, urlsplit

from kpsbot.simulator.loopback import BackgroundHTTPServer, QuietHandler
from kpsbot.simulator.state import DEFAULT_ERROR, FAULT_KINDS, Simulator
from kpsbot.simulator.verify import AuthFailure, verify_request

MAX_LIMIT = 1000
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


def _error(code: str, message: str) -> dict:
    return {"error_code": code, "error_msg": message}


def _int_param(query: dict[str, str], name: str, default: int, low: int, high: int | None) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not re.fullmatch(r"\d{1,9}", raw) or not (low <= int(raw) and (high is None or int(raw) <= high)):
        bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise ValueError(f"Invalid {name} {raw!r}: must be an integer {bound}")
    return int(raw)


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
