"""A KPS server for benchmarks, run as its own process: every answer is cheap, so the client is measured.

    python bench/kps_server.py --tasks 100000 --project cn-north-4:bench00project \
        --ak AK --sk SK --token TOKEN [--port 0] [--seed 7] [--fail-share 0.2]

It prints `kps_server listening on http://127.0.0.1:PORT` once it accepts connections, then serves
until SIGTERM or SIGINT.

Why it is fast: every page body is built from task records serialised once (bytes per task, joined
per page); the pages of `limit=1000` are built at start and after each churn, any other
(limit, offset) on first request, and kept. A connection is a thread reading raw HTTP/1.1 with
keep-alive; each answer (status line, headers and body) leaves in one `sendmsg` on a TCP_NODELAY
socket, so no answer waits for Nagle or a delayed ACK.

What it checks, like the API gateway: `X-Auth-Token` equal to the token, or an SDK-HMAC-SHA256
signature recomputed with the official SDK's own signer (`huaweicloudsdkcore.signer.signer.Signer`,
fed the method, path, query and signed headers as received; its Authorization must match), with
`X-Sdk-Date` at most 15 minutes off and a present `X-Project-Id` naming the project in the path. A
verified request's inputs (signature included) are kept in a bounded cache, so an identical request
is not recomputed. Anything else is 401 `APIGW.0301`.

KPS (SPEC §1), with or without a one-segment prefix before `/v3` (a `{region}` endpoint):

    GET /v3/{project_id}/running-tasks?limit=&offset=     {"total", "tasks"}
    GET /v3/{project_id}/failed-tasks?limit=&offset=      {"total", "tasks"} (with task_error_*)
    GET /v3/{project_id}/tasks/{task_id}                  {"server_id", "task_id", "task_status"}

Control (no auth; JSON answers):

    GET  /_bench/cpu                     {"user", "sys", "requests", "rejected"}: this process so far
    GET  /_bench/projects                [{"name", "id", "running", "failed"}]
    POST /_bench/churn?count=N[&project=ID]
         in each project (or the one named), N running tasks finish (a --fail-share of them FAILED_*,
         joining the failed list; the others SUCCESS_*) and N new ones start at the end of the list;
         answers {"finished": [[project_id, task_id], ...], "failed": k, "started": N}
    POST /_bench/reset                   back to the state at start (the same tasks, ids and times)

The tasks of a project are the same on every start with the same seed, and so is every churn after a
reset: a database recorded after a baseline stays valid across resets.
"""

from __future__ import annotations

import argparse
import hmac
import itertools
import json
import random
import re
import resource
import signal
import socket
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from urllib.parse import parse_qsl, unquote, urlsplit

from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer

PAGE_LIMIT = 1000  # the API's default and largest page: built ahead
CLOCK_SKEW = 15 * 60
DATE_FORMAT = "%Y%m%dT%H%M%SZ"
ACTIONS = ("RESET", "REPLACE", "UNBIND")
SERVERS = ("web", "db", "cache", "batch", "api", "worker")
KEYPAIRS = ("kp-ops", "kp-deploy", "kp-admin", "kp-ci")
TASK_ERROR = ("KPS.2003", "server is not running")
API_PATH = re.compile(
    r"^(?:/[^/]+)?/v3/(?P<project>[^/]+)/(?:(?P<list>running-tasks|failed-tasks)|tasks/(?P<task>[^/]+))/?$"
)
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed"}
SIGNED_CACHE_SIZE = 20_000


def _error(code: str, message: str) -> bytes:
    return json.dumps({"error_code": code, "error_msg": message}).encode()


class Project:
    """One project's tasks, as serialised records, and its pages built from them."""

    def __init__(self, name: str, project_id: str, tasks: int, seed: str, fail_share: float, base_ms: int):
        self.name, self.id = name, project_id
        self._initial = (tasks, seed, fail_share, base_ms)
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        tasks, seed, self.fail_share, self.base_ms = self._initial
        self._seed = seed
        self._rng = random.Random(f"{seed}:tasks")
        self._churns = 0
        records: dict[str, bytes] = {}
        status: dict[str, tuple[str, str]] = {}
        running: list[str] = []
        for _ in range(tasks):
            # Started 1 s to 10 min before the server: nothing is "stuck" during a run.
            task_id, record, server_id, operate = self._new_record(
                self.base_ms - self._rng.randint(1000, 600_000)
            )
            records[task_id], status[task_id] = record, (server_id, operate)
            running.append(task_id)
        with self._lock:
            self.records, self.status, self.running = records, status, running
            self.failed: list[str] = []
            self.failed_records: dict[str, bytes] = {}
            self._rebuild()

    def _new_record(self, task_ms: int) -> tuple[str, bytes, str, str]:
        rng = self._rng
        task_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        server_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        operate = f"RUNNING_{rng.choice(ACTIONS)}"
        record = {
            "task_id": task_id,
            "operate_type": operate,
            "task_time": str(task_ms),
            "server_name": f"{rng.choice(SERVERS)}-{rng.randint(1, 99):02d}",
            "server_id": server_id,
            "keypair_name": rng.choice(KEYPAIRS),
        }
        return task_id, json.dumps(record).encode(), server_id, operate

    def _rebuild(self) -> None:
        """Drop every built page and build the `limit=1000` ones again (under the lock)."""
        self.pages: dict[tuple[str, int, int], bytes] = {}
        for kind, ids in (("running-tasks", self.running), ("failed-tasks", self.failed)):
            for offset in range(0, max(len(ids), 1), PAGE_LIMIT):
                self._build(kind, PAGE_LIMIT, offset)

    def _build(self, kind: str, limit: int, offset: int) -> bytes:
        ids, records = (
            (self.running, self.records) if kind == "running-tasks" else (self.failed, self.failed_records)
        )
        rows = b", ".join([records[task_id] for task_id in ids[offset : offset + limit]])
        body = b'{"total": %d, "tasks": [%s]}' % (len(ids), rows)
        self.pages[(kind, limit, offset)] = body
        return body

    def page(self, kind: str, limit: int, offset: int) -> bytes:
        body = self.pages.get((kind, limit, offset))
        if body is None:
            with self._lock:
                body = self._build(kind, limit, offset)
        return body

    def task_status(self, task_id: str) -> bytes | None:
        found = self.status.get(task_id)
        if found is None:
            return None
        return b'{"server_id": "%s", "task_id": "%s", "task_status": "%s"}' % (
            found[0].encode(),
            task_id.encode(),
            found[1].encode(),
        )

    def churn(self, count: int) -> tuple[list[str], int]:
        """Finish `count` running tasks and start as many; the same choices after every reset."""
        with self._lock:
            self._churns += 1
            rng = random.Random(f"{self._seed}:churn:{self._churns}")
            finished = rng.sample(self.running, min(count, len(self.running)))
            gone, failed = set(finished), 0
            for task_id in finished:
                server_id, operate = self.status[task_id]
                action = operate.rpartition("_")[2]
                if rng.random() < self.fail_share:
                    failed += 1
                    self.status[task_id] = (server_id, f"FAILED_{action}")
                    record = json.loads(self.records[task_id])
                    record["task_error_code"], record["task_error_msg"] = TASK_ERROR
                    self.failed.append(task_id)
                    self.failed_records[task_id] = json.dumps(record).encode()
                else:
                    self.status[task_id] = (server_id, f"SUCCESS_{action}")
                del self.records[task_id]
            self.running = [task_id for task_id in self.running if task_id not in gone]
            start_ms = self.base_ms + 1000 * self._churns
            for _ in range(count):
                task_id, record, server_id, operate = self._new_record(start_ms)
                self.records[task_id], self.status[task_id] = record, (server_id, operate)
                self.running.append(task_id)
            self._rebuild()
            return finished, failed


class Verifier:
    """X-Auth-Token, or an SDK-HMAC-SHA256 signature recomputed with the official SDK's Signer."""

    def __init__(self, ak: str, sk: str, token: str | None) -> None:
        self.ak, self.token = ak, token
        self._signer = Signer(BasicCredentials(ak, sk))
        self._verified: dict[tuple, bool] = {}
        self._dates: dict[str, float | None] = {}

    def _epoch(self, sdk_date: str) -> float | None:
        """X-Sdk-Date as epoch seconds (None if malformed); one strptime per second of dates."""
        if sdk_date not in self._dates:
            if len(self._dates) > 10_000:
                self._dates.clear()
            try:
                when = datetime.strptime(sdk_date, DATE_FORMAT).replace(tzinfo=timezone.utc).timestamp()
            except ValueError:
                when = None
            self._dates[sdk_date] = when
        return self._dates[sdk_date]

    def check(
        self, method: str, target: str, headers: dict[str, str], project_id: str, body: bytes
    ) -> str | None:
        """None when the request is authenticated, else why not."""
        project = headers.get("x-project-id")
        if project is not None and project != project_id:
            return "X-Project-Id does not match the project in the request path"
        token = headers.get("x-auth-token")
        if token is not None:
            ok = self.token is not None and hmac.compare_digest(token.encode(), self.token.encode())
            return None if ok else "the token is invalid or has expired"
        authorization = headers.get("authorization")
        if authorization is None:
            return "no Authorization or X-Auth-Token header"
        scheme, _, rest = authorization.partition(" ")
        fields = dict(item.strip().partition("=")[::2] for item in rest.split(","))
        if scheme != "SDK-HMAC-SHA256" or not {"Access", "SignedHeaders", "Signature"} <= fields.keys():
            return "malformed Authorization header"
        if not hmac.compare_digest(fields["Access"].encode(), self.ak.encode()):
            return "unknown access key"
        names = fields["SignedHeaders"].split(";")
        if not {"host", "x-sdk-date"} <= set(names):
            return "host and x-sdk-date must be signed"
        signed = {}
        for name in names:
            if name not in headers:
                return f"signed header {name} is missing"
            signed[name] = headers[name]
        when = self._epoch(signed["x-sdk-date"])
        if when is None:
            return "X-Sdk-Date is not YYYYMMDDTHHMMSSZ"
        if abs(time.time() - when) > CLOCK_SKEW:
            return "X-Sdk-Date is more than 15 minutes away from the server time"
        key = (method, target, tuple(signed.items()), authorization, body)
        if key in self._verified:
            return None
        parts = urlsplit(target)
        request = SdkRequest(
            method=method,
            resource_path=parts.path,
            query_params=parse_qsl(parts.query, keep_blank_values=True),
            header_params=dict(signed),
            body=body,
        )
        expected = self._signer.sign(request).header_params["Authorization"].rpartition("Signature=")[2]
        if not hmac.compare_digest(expected.encode(), fields["Signature"].encode()):
            return "the signature does not match"
        if len(self._verified) >= SIGNED_CACHE_SIZE:
            self._verified.clear()
        self._verified[key] = True
        return None


class BenchServer:
    def __init__(self, projects: list[Project], verifier: Verifier) -> None:
        self.projects = {p.id: p for p in projects}
        self.verifier = verifier
        self.requests = 0
        self.rejected = 0
        self._ids = itertools.count(1)

    # -- answers ------------------------------------------------------------------

    def answer(self, method: str, target: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        if target.startswith("/_bench/"):
            return self.control(method, target)
        self.requests += 1
        parts = urlsplit(target)
        match = API_PATH.match(unquote(parts.path))
        if match is None or match["project"] not in self.projects:
            return 404, _error("KPS.0004", "Not found")
        project = self.projects[match["project"]]
        why = self.verifier.check(method, target, headers, project.id, body)
        if why is not None:
            self.rejected += 1
            return 401, _error("APIGW.0301", f"Incorrect IAM authentication information: {why}")
        if method != "GET":
            return 405, _error("KPS.0005", "Method not allowed")
        if match["task"] is not None:
            status = project.task_status(match["task"])
            return (200, status) if status is not None else (404, _error("KPS.0004", "Task not found"))
        query = dict(parse_qsl(parts.query))
        try:
            limit, offset = int(query.get("limit", PAGE_LIMIT)), int(query.get("offset", 0))
        except ValueError:
            return 400, _error("KPS.0005", "Invalid limit or offset")
        if not (1 <= limit <= PAGE_LIMIT and offset >= 0):
            return 400, _error("KPS.0005", "Invalid limit or offset")
        return 200, project.page(match["list"], limit, offset)

    def control(self, method: str, target: str) -> tuple[int, bytes]:
        parts = urlsplit(target)
        query = dict(parse_qsl(parts.query))
        if parts.path == "/_bench/cpu":
            usage = resource.getrusage(resource.RUSAGE_SELF)  # microseconds, where os.times() has ticks
            stats = {
                "user": usage.ru_utime,
                "sys": usage.ru_stime,
                "requests": self.requests,
                "rejected": self.rejected,
            }
            return 200, json.dumps(stats).encode()
        if parts.path == "/_bench/projects":
            rows = [
                {"name": p.name, "id": p.id, "running": len(p.running), "failed": len(p.failed)}
                for p in self.projects.values()
            ]
            return 200, json.dumps(rows).encode()
        if method == "POST" and parts.path == "/_bench/churn":
            chosen = [self.projects[query["project"]]] if "project" in query else list(self.projects.values())
            finished, failed = [], 0
            for project in chosen:
                ids, project_failed = project.churn(int(query.get("count", "0")))
                finished += [[project.id, task_id] for task_id in ids]
                failed += project_failed
            count = int(query.get("count", "0")) * len(chosen)
            return 200, json.dumps({"finished": finished, "failed": failed, "started": count}).encode()
        if method == "POST" and parts.path == "/_bench/reset":
            for project in self.projects.values():
                project.reset()
            return 200, b"{}"
        return 404, _error("KPS.0004", "Not found")

    # -- HTTP/1.1 over a raw socket -----------------------------------------------

    def connection(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = b""
        try:
            while True:
                end = buffer.find(b"\r\n\r\n")
                while end < 0:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buffer += data
                    end = buffer.find(b"\r\n\r\n")
                head, buffer = buffer[:end].decode("latin-1"), buffer[end + 4 :]
                lines = head.split("\r\n")
                method, target, version = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length") or 0)
                while len(buffer) < length:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buffer += data
                body, buffer = buffer[:length], buffer[length:]
                try:
                    status, payload = self.answer(method, target, headers, body)
                except Exception as exc:  # a bug here must show in the bench, not hang a client
                    status, payload = 500, _error("KPS.0001", f"{type(exc).__name__}: {exc}")
                close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
                self._send(sock, status, payload, close)
                if close:
                    return
        except (ConnectionError, OSError):
            return
        finally:
            sock.close()

    def _send(self, sock: socket.socket, status: int, payload: bytes, close: bool) -> None:
        head = (
            f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
            f"X-Request-Id: {next(self._ids):032x}\r\n"
            f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n"
        ).encode()
        # One sendmsg: headers and body leave together; the rest of a large body follows at once.
        sent = sock.sendmsg([head, payload])
        if sent < len(head) + len(payload):
            sock.sendall((head + payload)[sent:])

    def serve(self, host: str, port: int) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(128)
        print(f"kps_server listening on http://{host}:{listener.getsockname()[1]}", flush=True)
        while True:
            sock, _ = listener.accept()
            threading.Thread(target=self.connection, args=(sock,), daemon=True).start()


def parse_project(spec: str) -> tuple[str, str]:
    name, sep, project_id = spec.partition(":")
    if not name or not sep or not project_id:
        raise argparse.ArgumentTypeError(f"--project {spec!r}: expected NAME:ID")
    return name, project_id


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tasks", type=int, default=1000, help="running tasks in each project at start")
    parser.add_argument("--project", type=parse_project, action="append", required=True, metavar="NAME:ID")
    parser.add_argument("--ak", required=True)
    parser.add_argument("--sk", required=True)
    parser.add_argument("--token", default=None)
    parser.add_argument("--seed", default="7")
    parser.add_argument("--fail-share", type=float, default=0.2, help="share of finished tasks that fail")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    base_ms = int(time.time() * 1000)
    projects = [
        Project(name, project_id, args.tasks, f"{args.seed}:{project_id}", args.fail_share, base_ms)
        for name, project_id in args.project
    ]
    try:
        BenchServer(projects, Verifier(args.ak, args.sk, args.token)).serve(args.host, args.port)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
