"""Long-running parts of kpsbot as services: one way to start them, wait for SIGTERM/SIGINT, and stop
them in time (used by `run`, `watch`, `demo` and `simulate`)."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

log = logging.getLogger(__name__)

STOP_BUDGET = 8.0  # seconds for all services to stop; SPEC allows 10 from the signal to the exit

WsgiApp = Callable[[dict, Callable[..., Any]], Iterable[bytes]]


class Service(Protocol):
    """Anything `run_services` can run: an HTTP server, the watcher, a worker pool."""

    def start(self) -> object: ...

    def stop(self, timeout: float) -> None: ...


def run_services(
    services: Sequence[Service],
    *,
    stop: threading.Event | None = None,
    budget: float = STOP_BUDGET,
    tick: Callable[[], None] | None = None,
    tick_seconds: float = 0.5,
    ready: Callable[[], None] | None = None,
) -> None:
    """Start `services` in order, block until SIGTERM/SIGINT (or `stop` is set), then stop them in
    reverse order within `budget` seconds in all.

    `ready`, when given, runs once every service has started and the signal handlers are in place:
    whatever tells the outside world the process is up (a start-up line) belongs there, so a
    SIGTERM that follows it is always a clean stop. `tick`, when given, runs on this thread every
    `tick_seconds` while waiting (the simulator's clock, the demo's bounds); it may set `stop`.
    Signal handlers are installed only when called from the main thread, and the previous ones are
    restored on the way out.
    """
    stop = stop or threading.Event()
    previous = _install_signal_handlers(stop)
    started: list[Service] = []
    try:
        for service in services:
            service.start()
            started.append(service)
        if ready is not None:
            ready()
        while not stop.wait(tick_seconds):
            if tick is not None:
                tick()
        log.info("stopping")
    finally:
        deadline = time.monotonic() + budget
        for index, service in enumerate(reversed(started)):
            share = max(0.1, (deadline - time.monotonic()) / (len(started) - index))
            try:
                service.stop(timeout=share)
            except Exception:
                log.exception("error while stopping %s", type(service).__name__)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _install_signal_handlers(stop: threading.Event) -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handle(signum: int, frame: Any) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    return {signum: signal.signal(signum, handle) for signum in (signal.SIGTERM, signal.SIGINT)}


class HttpService:
    """A WSGI app served by cheroot on a background thread; `port` is the bound port (0 picks one).

    cheroot's `stop()` is its public way to stop a server from another thread: it ends the
    selector loop synchronously and only then closes the sockets, so stopping cannot race with
    a `select()` on a closed descriptor. `prepare()` (bind and listen) runs in `start()` on the
    caller's thread, so a stop can never arrive while the server is still preparing.
    """

    def __init__(
        self,
        wsgi_app: WsgiApp,
        host: str = "0.0.0.0",
        port: int = 3000,
        *,
        threads: int = 8,
        max_body: int = 64 * 1024,
        name: str = "http",
    ) -> None:
        self.wsgi_app = wsgi_app
        self.host = host
        self.port = port
        self.threads = threads
        self.max_body = max_body
        self.name = name
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        from cheroot.wsgi import Server

        # A listen backlog of 128, not cheroot's 5: past the backlog a connect's SYN is dropped and
        # only resent a second later (Slack's, a probe's, a scrape's arriving together).
        server = Server(
            (self.host, self.port),
            self.wsgi_app,
            numthreads=self.threads,
            timeout=30,
            request_queue_size=128,
        )
        server.max_request_body_size = self.max_body
        server.expiration_interval = 0.2  # the selector's wake-up: bounds how long stop() waits
        server.server_name = "kpsbot"
        server.prepare()  # binds now: a port in use fails here, in the caller
        self.port = server.bind_addr[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve, name=self.name, daemon=True)
        self._thread.start()
        log.info("serving HTTP on %s:%s", self.host, self.port)

    def stop(self, timeout: float = 3.0) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown_timeout = max(timeout - 0.5, 0.1)  # for requests still being answered
        server.stop()
        if self._thread is not None:
            self._thread.join(timeout)
        log.info("HTTP server stopped")
