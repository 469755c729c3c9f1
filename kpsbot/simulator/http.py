"""The simulator over HTTP: several projects' KPS task API, IAM's project look-up, control endpoints, `serve`.

One server stands in for one account: every project (a `Simulator`) it serves shares the account's
credentials, and every request is verified with them (`SimulatorServer` explains how they are chosen).
Every answer carries `X-Request-Id`.

KPS (SPEC §1), for whichever served project has the ID; also under a region prefix, so that one server
stands in for several regions with `KPS_ENDPOINT=http://HOST:PORT/{region}` (signatures are checked
over the full path as sent):

    GET [/{region}]/v3/{project_id}/running-tasks?limit=&offset=
    GET [/{region}]/v3/{project_id}/failed-tasks?limit=&offset=
    GET [/{region}]/v3/{project_id}/tasks/{task_id}

An unknown project, or a project addressed under a prefix that is not its region, is 404 `KPS.0004`.
A request counts (`Simulator.requests`), waits (`delay`) and meets faults as the project it addresses;
one that addresses no served project as the first project.

IAM (KeystoneListProjects), what the official SDK asks when it has AK/SK but no project ID:

    GET [/{region}]/v3/projects[?name=<project name>]

lists the served projects of that name (all of them without `name`; none is `{"projects": []}`; two
projects of one name are both listed). It is authenticated like a KPS call (any X-Project-Id is
ignored), is not counted as a KPS request, and meets only the IAM faults (`iam_fail_next`).

Control endpoints (no auth, never counted or faulted; JSON bodies and answers):

    GET  /_sim/projects                              the served projects: name, region, id, counts
    POST /_sim/iam/faults                            {"fail_next": n, "status", "kind", "body", "clear"}
    GET  /_sim/state                                 counts, requests and transitions
    POST /_sim/tasks                                 start a task: ADD_TASK_FIELDS, all optional
    POST /_sim/tasks/{task_id}/finish                {"success", "error_code", "error_msg"}
    POST /_sim/tasks/{task_id}/hide | remove
    POST /_sim/churn                                 {"count": n}
    POST /_sim/tick                                  {"now": epoch seconds}
    POST /_sim/faults                                {"delay", "fault_ratio", "fault_kinds", "fail_next",
                                                      "status", "kind", "body", "clear"}

The project endpoints (all but the first two) address the server's only project; with several
projects, they take a selector: `/_sim/projects/{project_id}/state`, `/_sim/projects/{project_id}/tasks`, ...
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import threading
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, TextIO
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from kpsbot.simulator.loopback import BackgroundHTTPServer, QuietHandler
from kpsbot.simulator.state import (
    DEFAULT_ERROR,
    FAULT_KINDS,
    TIMEOUT_FAULT_SECONDS,
    Simulator,
    derived_project_id,
    planned_faults,
)
from kpsbot.simulator.verify import AuthFailure, Credentials, verify_request

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
    r"^(?:/(?P<region>[^/]+))?/v3/(?P<project>[^/]+)/"
    r"(?:(?P<list>running-tasks|failed-tasks)|tasks/(?P<task>[^/]+))/?$"
)
IAM_PROJECTS_PATH = re.compile(r"^(?:/(?P<region>[^/]+))?/v3/projects/?$")
CONTROL_PROJECT_PATH = re.compile(r"^/_sim/projects/(?P<project>[^/]+)(?P<op>/.+)$")
CONTROL_TASK_PATH = re.compile(r"^/tasks/(?P<task>[^/]+)/(?P<verb>finish|hide|remove)$")
ADD_TASK_FIELDS = (
    "operate_type",
    "server_name",
    "keypair_name",
    "task_id",
    "task_time_ms",
    "server_id",
    "finish_in",
)
NOT_PUBLISHED = ("APIGW.0101", "The API does not exist or has not been published in the environment")
# The account (IAM "domain") every served project belongs to.
DOMAIN_ID = hashlib.sha256(b"kpsbot-sim-domain").hexdigest()[:32]


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


class SimulatorServer:
    """Serves one Simulator, or several (projects of one account), over HTTP on a background thread.

    All projects of one server share the account's credentials: each Simulator still takes
    `ak`/`sk`/`token` (as before there were several), and they must all be equal; the server
    verifies every request, KPS or IAM, with them. Also a context manager.
    """

    def __init__(self, sims: Simulator | Sequence[Simulator], host: str = "127.0.0.1", port: int = 0) -> None:
        self.sims: tuple[Simulator, ...] = (sims,) if isinstance(sims, Simulator) else tuple(sims)
        if not self.sims:
            raise ValueError("a simulator server needs at least one project")
        self._by_id: dict[str, Simulator] = {}
        for sim in self.sims:
            if sim.project_id in self._by_id:
                raise ValueError(f"two simulated projects have the ID {sim.project_id}")
            self._by_id[sim.project_id] = sim
        if len({sim.credentials for sim in self.sims}) > 1:
            raise ValueError(
                "the projects of one simulator server share the account's credentials: "
                "give every Simulator the same ak, sk and token"
            )
        self.credentials: Credentials = self.sims[0].credentials
        self.host = host
        self.port = port
        self.iam_requests = 0
        self.iam_timeout_seconds = TIMEOUT_FAULT_SECONDS
        self._iam_faults: deque[dict] = deque()
        self._lock = threading.Lock()
        self._httpd: BackgroundHTTPServer | None = None

    @property
    def sim(self) -> Simulator:
        """The first project (the only one of a one-project server)."""
        return self.sims[0]

    def project(self, project_id: str) -> Simulator | None:
        return self._by_id.get(project_id)

    @property
    def regions(self) -> list[str]:
        """The regions of the served projects, sorted."""
        return sorted({sim.region for sim in self.sims if sim.region})

    def clock(self) -> float:
        return self.sims[0].clock()

    # -- IAM faults ---------------------------------------------------------------------------

    def iam_fail_next(
        self, n: int = 1, status: int | None = None, body: Any = None, kind: str = "status"
    ) -> None:
        """Fail the next `n` IAM requests, as `Simulator.fail_next` does for KPS ones."""
        faults = planned_faults(n, status, body, kind)
        with self._lock:
            self._iam_faults.extend(faults)

    def iam_clear_faults(self) -> None:
        with self._lock:
            self._iam_faults.clear()

    def iam_state(self) -> dict:
        with self._lock:
            return {"requests": self.iam_requests, "pending_faults": len(self._iam_faults)}

    def _admit_iam(self) -> dict | None:
        with self._lock:
            self.iam_requests += 1
            return self._iam_faults.popleft() if self._iam_faults else None

    # -- running --------------------------------------------------------------------------------

    def start(self) -> None:
        if self._httpd is not None:
            return
        handler = type("BoundSimulatorHandler", (SimulatorHandler,), {"site": self})
        self._httpd = BackgroundHTTPServer((self.host, self.port), handler)
        self.port = self._httpd.server_address[1]
        self._httpd.start_background("kps-simulator")

    def stop(self, timeout: float = 5.0) -> None:
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


def iam_project(server: SimulatorServer, sim: Simulator, base_url: str) -> dict:
    """A project as IAM's `GET /v3/projects` lists it."""
    if sim.region and sim.name != sim.region:  # a sub-project: its parent is the region's project
        parent = next((s for s in server.sims if s.name == sim.region), None)
        parent_id = parent.project_id if parent else derived_project_id(sim.region)
    else:  # a region's own project: its parent is the account
        parent_id = DOMAIN_ID
    return {
        "id": sim.project_id,
        "name": sim.name,
        "domain_id": DOMAIN_ID,
        "enabled": True,
        "description": "",
        "is_domain": False,
        "parent_id": parent_id,
        "links": {"self": f"{base_url}/v3/projects/{quote(sim.project_id, safe='')}"},
    }


class SimulatorHandler(QuietHandler):
    site: SimulatorServer  # set on the subclass made per server

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
            elif (match := IAM_PROJECTS_PATH.match(path)) is not None:
                self._iam(match, body)
            else:
                self._api(path, body)
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    def _verified(self, body: bytes, now: float, project_id: str | None) -> bool:
        """Verify the request's credentials; answer 401 and return False when they fail."""
        try:
            verify_request(
                self.site.credentials, self.command, self.path, self.headers, body, now, project_id
            )
        except AuthFailure as exc:
            self.send_json(401, _error("APIGW.0301", f"Incorrect IAM authentication information: {exc}"))
            return False
        return True

    # -- the KPS API ----------------------------------------------------------------

    def _api(self, path: str, body: bytes) -> None:
        match = API_PATH.match(path)
        project = self.site.project(unquote(match["project"])) if match else None
        sim = project or self.site.sim
        fault = sim._admit(self.command, path)
        if self.server.pause(sim.delay):
            return
        if fault is not None and self._fault(fault, sim.timeout_seconds):
            return
        if not self._verified(body, sim.clock(), project.project_id if project else None):
            return
        if self.command != "GET" or match is None:
            self.send_json(404, _error(*NOT_PUBLISHED))
            return
        if project is None:
            self.send_json(404, _error("KPS.0004", f"project {unquote(match['project'])} does not exist"))
            return
        region = unquote(match["region"]) if match["region"] else None
        if region is not None and region != project.region:
            message = f"project {project.project_id} does not exist in region {region}"
            self.send_json(404, _error("KPS.0004", message))
            return
        if match["task"]:
            task_id = unquote(match["task"])
            status = project.task_status(task_id)
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
        total, rows = project.page(match["list"], limit, offset)
        self.send_json(200, {"total": total, "tasks": rows})

    # -- IAM ------------------------------------------------------------------------

    def _iam(self, match: re.Match[str], body: bytes) -> None:
        site = self.site
        fault = site._admit_iam()
        if fault is not None and self._fault(fault, site.iam_timeout_seconds):
            return
        if not self._verified(body, site.clock(), None):
            return
        region = unquote(match["region"]) if match["region"] else None
        if self.command != "GET" or (region is not None and region not in site.regions):
            self.send_json(404, _error(*NOT_PUBLISHED))
            return
        query = dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))
        name = query.get("name")
        host = self.headers.get("Host") or f"{site.host}:{site.port}"
        base_url = f"http://{host}" + (f"/{quote(region, safe='')}" if region else "")
        projects = [iam_project(site, sim, base_url) for sim in site.sims if name is None or sim.name == name]
        listing = f"{base_url}/v3/projects" + (f"?{urlencode({'name': name})}" if name is not None else "")
        self.send_json(
            200, {"projects": projects, "links": {"self": listing, "previous": None, "next": None}}
        )

    def _fault(self, fault: dict, timeout_seconds: float) -> bool:
        """Answer with the fault; False when the request should then be served normally."""
        kind = fault["kind"]
        if kind == "reset":
            self.reset_connection()
            return True
        if kind == "timeout":
            return self.server.pause(timeout_seconds)
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
        site = self.site
        try:
            args = json.loads(body) if body.strip() else {}
            if not isinstance(args, dict):
                raise ValueError("the body must be a JSON object")
        except ValueError as exc:
            self.send_json(400, {"error": f"bad JSON body: {exc}"})
            return
        try:
            if path == "/_sim/projects" and self.command == "GET":
                self.send_json(200, {"projects": [_project_summary(sim) for sim in site.sims]})
            elif path == "/_sim/iam/faults" and self.command == "POST":
                self.send_json(200, self._set_iam_faults(args))
            elif (match := CONTROL_PROJECT_PATH.match(path)) is not None:
                sim = site.project(unquote(match["project"]))
                if sim is None:
                    self.send_json(404, {"error": f"no simulated project {unquote(match['project'])}"})
                else:
                    self._control_project(sim, match["op"], args, path)
            elif len(site.sims) > 1:
                self.send_json(
                    400,
                    {
                        "error": f"this simulator serves {len(site.sims)} projects: "
                        f"address one as /_sim/projects/{{project_id}}{path[len('/_sim') :]}"
                    },
                )
            else:
                self._control_project(site.sim, path[len("/_sim") :], args, path)
        except KeyError as exc:
            self.send_json(404, {"error": str(exc.args[0]) if exc.args else "not found"})
        except (TypeError, ValueError) as exc:
            self.send_json(400, {"error": str(exc)})

    def _control_project(self, sim: Simulator, op: str, args: dict, path: str) -> None:
        if op == "/state" and self.command == "GET":
            self.send_json(200, sim.state())
        elif op == "/tasks" and self.command == "POST":
            unknown = set(args) - set(ADD_TASK_FIELDS)
            if unknown:
                raise ValueError(f"unknown fields: {', '.join(sorted(unknown))}")
            self.send_json(200, sim.add_task(**args))
        elif op == "/churn" and self.command == "POST":
            self.send_json(200, sim.churn(int(args.get("count", 1))))
        elif op == "/tick" and self.command == "POST":
            sim.tick(args.get("now"))
            self.send_json(200, sim.counts())
        elif op == "/faults" and self.command == "POST":
            self.send_json(200, _set_faults(sim, args))
        elif (match := CONTROL_TASK_PATH.match(op)) and self.command == "POST":
            task_id = unquote(match["task"])
            if match["verb"] == "finish":
                status: str | None = sim.finish_task(
                    task_id,
                    success=bool(args.get("success", True)),
                    error_code=str(args.get("error_code", DEFAULT_ERROR[0])),
                    error_msg=str(args.get("error_msg", DEFAULT_ERROR[1])),
                )
            else:
                getattr(sim, f"{match['verb']}_task")(task_id)
                status = sim.status(task_id)
            self.send_json(200, {"task_id": task_id, "task_status": status})
        else:
            self.send_json(404, {"error": f"no control endpoint {self.command} {path}"})

    def _set_iam_faults(self, args: dict) -> dict:
        site = self.site
        if args.get("clear"):
            site.iam_clear_faults()
        if args.get("fail_next"):
            site.iam_fail_next(
                int(args["fail_next"]),
                status=int(args["status"]) if "status" in args else None,
                body=args.get("body"),
                kind=args.get("kind", "status"),
            )
        return site.iam_state()


def _project_summary(sim: Simulator) -> dict:
    return {"name": sim.name, "region": sim.region, "id": sim.project_id, **sim.counts()}


def _set_faults(sim: Simulator, args: dict) -> dict:
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


def startup_line(server: SimulatorServer) -> str:
    """What `serve` prints once listening: the projects and the base URLs to configure; no secret."""
    sims = server.sims
    if len(sims) == 1 and sims[0].region is None and sims[0].name == sims[0].project_id:
        sim = sims[0]  # one project known by its ID alone: the URL is all a client needs
        running = sim.counts()["running"]
        return f"KPS simulator listening on {server.url} (project {sim.project_id}, {running} tasks)"
    projects = ", ".join(
        f"{sim.name} (region {sim.region or 'none'}, id {sim.project_id}, {sim.counts()['running']} tasks)"
        for sim in sims
    )
    base = f"{server.url}/{{region}}" if len(server.regions) > 1 else server.url
    noun = "project" if len(sims) == 1 else f"{len(sims)} projects"
    return (
        f"KPS simulator listening on {server.url} with {noun}: {projects}; "
        f"set KPS_ENDPOINT={base} KPS_IAM_ENDPOINT={base}"
    )


def serve(host: str, port: int, sims: Simulator | Sequence[Simulator], out: TextIO | None = None) -> None:
    """Serve the projects until Ctrl-C or SIGTERM, ticking their lifecycles once a second."""
    from kpsbot.services import run_services

    server = SimulatorServer(sims, host, port)

    def tick() -> None:
        for sim in server.sims:
            sim.tick()

    def ready() -> None:  # bound (a port in use has failed by now) and SIGTERM handled
        print(startup_line(server), file=out or sys.stdout, flush=True)

    run_services([server], tick=tick, tick_seconds=1.0, ready=ready)
