"""HTTP clients for KPS's task API and IAM's project look-up: one pooled session, bounded retries,
bounded concurrency, one error type."""

from __future__ import annotations

import json
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import orjson
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from kpsbot.kps.auth import TokenAuth
from kpsbot.kps.models import (
    FailedTask,
    MalformedTask,
    RunningTask,
    TaskPage,
    TaskRecords,
    TaskStatus,
    api_fields,
    listing_fingerprint,
)

log = logging.getLogger(__name__)

API_PAGE_LIMIT = 1000  # the API's own default and the largest page we ask for
MAX_PAGES = 1000  # 1,000,000 tasks: far above any real project, low enough to stop a lying `total`
THROTTLED = "APIG.0308"  # API gateway throttling; its guidance is to retry after 2-5 s
RETRY_AFTER_CAP = 10.0
PREFETCH_PAGES = 3  # pages requested ahead of the one being read, once KPS is slow to answer
# A page that takes longer than this to arrive is worth fetching ahead. A near endpoint (loopback,
# a VPC endpoint) answers a 1,000-row page in 2 ms, faster than threads hand pages over: there,
# page after page is quicker (100,000 tasks: 135 ms, against 185 ms with 3 pages ahead).
SLOW_PAGE_SECONDS = 0.010


class KpsError(Exception):
    """A KPS (or IAM) call that failed: HTTP status, error code and message, and the request id."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_code: str | None = None,
        error_msg: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_code = error_code
        self.error_msg = error_msg
        self.request_id = request_id

    @property
    def auth_rejected(self) -> bool:
        return self.status in (401, 403)

    @property
    def timed_out(self) -> bool:
        return self.error_code == "timeout"

    def __str__(self) -> str:
        parts = [self.message]
        if self.status and f"HTTP {self.status}" not in self.message:
            parts.append(f"HTTP {self.status}")
        if self.request_id:
            parts.append(f"request id {self.request_id}")
        return " | ".join(parts).replace("\n", " ")


class _BoundedRetry(Retry):
    """urllib3 Retry whose honoured Retry-After is capped, so a hostile header cannot stall us."""

    def get_retry_after(self, response):  # noqa: ANN001 - urllib3's signature
        seconds = super().get_retry_after(response)
        return None if seconds is None else min(seconds, RETRY_AFTER_CAP)


def build_session(retries: int = 3, backoff: float = 0.5, pool_size: int = 16) -> requests.Session:
    """A pooled session that retries idempotent GETs on connection errors, 429 and 5xx."""
    retry = _BoundedRetry(
        total=retries,
        connect=retries,
        read=False,  # re-raise read timeouts as they are: retrying a slow KPS would multiply the wait
        status=retries,
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=frozenset({"GET"}),
        backoff_factor=backoff,
        backoff_max=RETRY_AFTER_CAP,
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    adapter = HTTPAdapter(max_retries=retry, pool_connections=pool_size, pool_maxsize=pool_size)
    session = requests.Session()
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers["Accept"] = "application/json"
    session.headers["User-Agent"] = "kpsbot"
    return session


def parse_json(data: bytes) -> Any:
    """JSON from a body's bytes: orjson (about twice as fast on a page of 1,000 tasks), and the
    stdlib for what orjson refuses but the stdlib reads (NaN, integers beyond 64 bits)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def _excerpt(text: str, size: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= size else text[:size] + "…"


Observer = Callable[[str, "int | None"], None]  # (endpoint, HTTP status or None) after each request


class ApiClient:
    """GETs against one Huawei Cloud API endpoint, with its errors turned into KpsError.

    Clients of several projects (and IAM) share one session (pool, retry policy, auth) and one
    `limiter`, a semaphore that bounds the requests in flight across all of them: API Gateway
    throttles (APIG.0308) an account that sends too many at once.
    """

    service = "KPS"

    def __init__(
        self,
        endpoint: str,
        auth: requests.auth.AuthBase | None = None,
        *,
        timeout: tuple[float, float] = (5.0, 15.0),
        session: requests.Session | None = None,
        retries: int = 3,
        backoff: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
        limiter: threading.Semaphore | None = None,
        observe: Observer | None = None,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.timeout = timeout
        self.session = session or build_session(retries=retries, backoff=backoff)
        if auth is not None:
            self.session.auth = auth
        self.limiter = limiter
        self._observe = observe
        self._sleep = sleep

    def _get(
        self, path: str, params: dict[str, str] | None = None, *, headers: dict[str, str] | None = None
    ) -> Any:
        return self._json(self._get_response(path, params, headers=headers))

    def _get_response(
        self, path: str, params: dict[str, str] | None = None, *, headers: dict[str, str] | None = None
    ) -> requests.Response:
        """A successful answer to GET `path` (APIG.0308 retried), or the KpsError it became."""
        url = f"{self.endpoint}{path}"
        name = _endpoint_name(path)
        for attempt in range(3):
            response = self._send(url, params, headers, name)
            if response.ok:
                return response
            error = self._error(response)
            # urllib3 already retried a 429; APIG.0308 can also come under other statuses.
            if error.error_code != THROTTLED or error.status == 429 or attempt == 2:
                raise error
            self._sleep(2.0 * (attempt + 1))  # APIG.0308 is throttling under another status
        raise AssertionError("unreachable")

    def _send(
        self, url: str, params: dict[str, str] | None, headers: dict[str, str] | None, name: str
    ) -> requests.Response:
        status: int | None = None
        try:
            if self.limiter is not None:
                self.limiter.acquire()
            try:
                response = self.session.get(url, params=params, headers=headers, timeout=self.timeout)
            finally:
                if self.limiter is not None:
                    self.limiter.release()
            status = response.status_code
            return response
        except requests.Timeout:
            raise KpsError(
                f"{self.service} did not answer within {self.timeout[1]:g} s", error_code="timeout"
            ) from None
        except requests.RequestException as exc:
            reason = type(exc).__name__
            raise KpsError(
                f"cannot reach {self.service} at {self.endpoint} ({reason})", error_code="connection"
            ) from None
        finally:
            if self._observe is not None:
                self._observe(name, status)

    def _json(self, response: requests.Response) -> Any:
        try:
            return parse_json(response.content)
        except ValueError:
            raise KpsError(
                f"{self.service} answered with a body that is not JSON: {_excerpt(response.text)!r}",
                status=response.status_code,
                request_id=response.headers.get("X-Request-Id"),
            ) from None

    def _error(self, response: requests.Response) -> KpsError:
        request_id = response.headers.get("X-Request-Id")
        try:
            body = parse_json(response.content)
        except ValueError:
            body = None
        code = msg = None
        if isinstance(body, dict):
            code = body.get("error_code")
            msg = body.get("error_msg")
            if isinstance(body.get("error"), dict):  # the API gateway's (and IAM's) own error shape
                code = code or body["error"].get("code")
                msg = msg or body["error"].get("message")
        code = str(code) if code is not None else None
        msg = str(msg) if msg is not None else None
        if code or msg:
            message = f"{self.service} error {code or '?'}: {msg or ''}".strip()
        else:
            excerpt = _excerpt(response.text) or "empty body"
            message = f"{self.service} answered HTTP {response.status_code}: {excerpt}"
        if response.status_code == 401 and isinstance(self.session.auth, TokenAuth):
            message += (
                " (the IAM token may have expired: tokens last 24 h; use CLOUD_SDK_AK/CLOUD_SDK_SK"
                " for long-running use)"
            )
        return KpsError(
            message, status=response.status_code, error_code=code, error_msg=msg, request_id=request_id
        )


def _skipping_row(problem: MalformedTask) -> None:
    log.warning("skipping a running-tasks row that cannot be parsed: %s", problem)


def _endpoint_name(path: str) -> str:
    """A bounded label for a request path: `running-tasks`, `failed-tasks`, `task-status`, `projects`."""
    if path.endswith("/running-tasks"):
        return "running-tasks"
    if path.endswith("/failed-tasks"):
        return "failed-tasks"
    if "/tasks/" in path:
        return "task-status"
    if path.endswith("/projects"):
        return "projects"
    return "other"


class KpsClient(ApiClient):
    """Reads running tasks, failed tasks and task status for one project."""

    slow_page_seconds = SLOW_PAGE_SECONDS

    def __init__(
        self, endpoint: str, project_id: str, auth: requests.auth.AuthBase | None = None, **options: Any
    ) -> None:
        super().__init__(endpoint, auth, **options)
        self.project_id = project_id
        self._headers = {"X-Project-Id": project_id}

    def __repr__(self) -> str:
        return f"KpsClient({self.endpoint!r}, project_id={self.project_id!r})"

    def _call(self, resource: str, params: dict[str, str] | None = None) -> Any:
        return self._json(self._call_response(resource, params))

    def _call_response(self, resource: str, params: dict[str, str] | None = None) -> requests.Response:
        path = f"/v3/{quote(self.project_id, safe='')}/{resource}"
        return self._get_response(path, params, headers=self._headers)

    # -- one page ---------------------------------------------------------------

    def list_running_tasks(self, limit: int = API_PAGE_LIMIT, offset: int = 0) -> TaskPage:
        return self._page("running-tasks", RunningTask, limit, offset)

    def list_failed_tasks(self, limit: int = API_PAGE_LIMIT, offset: int = 0) -> TaskPage:
        return self._page("failed-tasks", FailedTask, limit, offset)

    def get_task_status(self, task_id: str) -> TaskStatus:
        body = self._call(f"tasks/{quote(task_id, safe='')}")
        try:
            return TaskStatus.from_api(body, task_id)
        except MalformedTask as exc:
            raise KpsError(f"KPS returned a task status of the wrong shape: {exc}") from None

    # -- every page ---------------------------------------------------------------

    def all_running_tasks(self, page_size: int = API_PAGE_LIMIT) -> TaskPage:
        """Every running task (de-duplicated), with the rows that could not be parsed."""
        return self._collect("running-tasks", RunningTask, page_size)

    def all_failed_tasks(self, page_size: int = API_PAGE_LIMIT) -> TaskPage:
        return self._collect("failed-tasks", FailedTask, page_size)

    def running_task_pages(self, page_size: int = API_PAGE_LIMIT) -> Iterator[list[dict[str, str]]]:
        """Every running task as the API's six string fields, a page at a time and de-duplicated,
        without building task objects: for listings that print them (`kpsbot tasks --all --json`)."""
        seen: set[str] = set()
        for _total, rows, _body in self._row_pages("running-tasks", page_size, PREFETCH_PAGES):
            page = []
            for row in rows:
                fields = api_fields(row)
                if fields is None:
                    try:
                        fields = RunningTask.from_api(row).to_api()  # coerces odd values, or raises
                    except MalformedTask as exc:
                        log.warning("skipping a running-tasks row that cannot be parsed: %s", exc)
                        continue
                if fields["task_id"] not in seen:
                    seen.add(fields["task_id"])
                    page.append(fields)
            yield page

    def running_task_records(self, page_size: int = API_PAGE_LIMIT) -> TaskRecords:
        """Every running task keyed by task_id, indexed only when used, with the listing's
        fingerprint: the watcher's cheap path."""
        index = TaskRecords(on_problem=_skipping_row)
        crc = size = 0
        for _total, rows, body in self._row_pages("running-tasks", page_size, PREFETCH_PAGES):
            index.add_page(rows)
            crc, size = zlib.crc32(body, crc), size + len(body)
        index.fingerprint = listing_fingerprint(crc, size)
        return index

    def _collect(self, resource: str, model: type[RunningTask], page_size: int) -> TaskPage:
        skipped: list = []
        tasks = list(self._walk(resource, model, page_size, skipped, prefetch=PREFETCH_PAGES))
        return TaskPage(total=len(tasks), tasks=tasks, skipped=skipped)

    def _walk(
        self,
        resource: str,
        model: type[RunningTask],
        page_size: int,
        skipped: list | None = None,
        prefetch: int = 0,
    ) -> Iterator[Any]:
        # Offset paging over a list that changes underneath can repeat entries: keep the first.
        seen: set[str] = set()
        for total, rows, _body in self._row_pages(resource, page_size, prefetch):
            page = self._parse(resource, model, total, rows)
            if skipped is not None:
                skipped.extend(page.skipped)
            for task in page.tasks:
                if task.task_id not in seen:
                    seen.add(task.task_id)
                    yield task

    def _row_pages(
        self, resource: str, page_size: int, prefetch: int = 0
    ) -> Iterator[tuple[int, list, bytes]]:
        """Each page's (total, raw rows, body as sent) in offset order, until an empty page or
        `total` is reached.

        With `prefetch`, once a page took `slow_page_seconds` or more to arrive, the pages after
        the current one (as far as its `total` says there are rows, and at most MAX_PAGES) are
        requested ahead on that many threads, so waiting for KPS overlaps with reading what has
        arrived. Pages are still taken strictly in order
        with the sequential stopping rules; when a short page moves the offsets, what was
        fetched ahead is dropped and prefetching starts again from the new offset. Only callers
        that read every page use it: a lazy walk stopped early must not have asked for more.
        """
        pool = None  # made when a second page is due: most projects fit on one
        ahead: dict[int, Any] = {}  # offset -> Future of that page
        offset = next_ahead = total = 0
        slow = False  # a page has kept us waiting: fetch ahead from now on
        try:
            for _ in range(MAX_PAGES):
                future = ahead.pop(offset, None)
                if future is None and ahead:  # a short page moved the offsets: start again from here
                    for stale in ahead.values():
                        stale.cancel()
                    ahead.clear()
                    next_ahead = offset
                if future is not None:
                    total, rows, body = future.result()
                else:
                    begun = time.monotonic()
                    total, rows, body = self._rows(resource, page_size, offset)
                    slow = slow or time.monotonic() - begun >= self.slow_page_seconds
                yield total, rows, body
                offset += len(rows)
                if not rows or offset >= total:
                    return
                if prefetch > 0 and slow:
                    if pool is None:
                        from concurrent.futures import ThreadPoolExecutor

                        pool = ThreadPoolExecutor(prefetch, thread_name_prefix="kps-page")
                    next_ahead = max(next_ahead, offset)
                    end = min(total, MAX_PAGES * page_size)
                    while len(ahead) < prefetch and next_ahead < end:
                        ahead[next_ahead] = pool.submit(self._rows, resource, page_size, next_ahead)
                        next_ahead += page_size
            log.warning("stopped paging after %d pages; KPS reported total=%s", MAX_PAGES, total)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    # -- pages ----------------------------------------------------------------------

    def _page(self, resource: str, model: type[RunningTask], limit: int, offset: int) -> TaskPage:
        total, rows, _body = self._rows(resource, limit, offset)
        return self._parse(resource, model, total, rows)

    @staticmethod
    def _parse(resource: str, model: type[RunningTask], total: int, rows: list) -> TaskPage:
        tasks, skipped = [], []
        for row in rows:
            try:
                tasks.append(model.from_api(row))
            except MalformedTask as exc:
                log.warning("skipping a %s row that cannot be parsed: %s", resource, exc)
                skipped.append(row)
        return TaskPage(total=total, tasks=tasks, skipped=skipped)

    def _rows(self, resource: str, limit: int, offset: int) -> tuple[int, list, bytes]:
        """One page's `total` and raw `tasks`, with the body's shape checked, and the body's bytes."""
        response = self._call_response(resource, {"limit": str(limit), "offset": str(offset)})
        body = self._json(response)
        total = body.get("total") if isinstance(body, dict) else None
        rows = body.get("tasks") if isinstance(body, dict) else None
        if isinstance(total, str) and total.isdigit():
            total = int(total)
        if total is None and isinstance(rows, list):
            # No `total` (the SDK's model makes it optional): a full page means "maybe more".
            total = offset + len(rows) + (1 if len(rows) >= limit else 0)
        if not isinstance(rows, list) or not isinstance(total, int) or isinstance(total, bool):
            raise KpsError(
                f"KPS returned {resource} of the wrong shape (expected total and tasks): "
                f"{_excerpt(json.dumps(body))}"
            )
        return max(total, 0), rows, response.content
