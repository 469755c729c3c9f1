"""Serving the Bolt app: waitress in HTTP mode, Bolt's SocketModeHandler in Socket Mode, and a
service runner that starts everything, waits for SIGTERM/SIGINT and stops it all in time."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from slack_bolt import App
from slack_bolt.adapter.wsgi import SlackRequestHandler

from kpsbot.settings import Settings

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
HEALTH_PATH = "/healthz"
MAX_BODY = 64 * 1024  # Slack's payloads are a few KiB; anything this big is not from Slack
STOP_BUDGET = 8.0  # seconds for all services to stop; SPEC allows 10 from the signal to exit

Health = Callable[[], dict]
WsgiApp = Callable[[dict, Callable[..., Any]], Iterable[bytes]]


class Service(Protocol):
    """Anything `run_services` can run: the Slack side, the watcher, the worker pool."""

    def start(self) -> None: ...

    def stop(self, timeout: float) -> None: ...


# -- HTTP ---------------------------------------------------------------------------


def _reply(
    start_response: Callable[..., Any], status: str, body: Any, content_type: str = "application/json"
) -> list[bytes]:
    data = (json.dumps(body) if content_type == "application/json" else str(body)).encode()
    start_response(
        status, [("Content-Type", f"{content_type}; charset=utf-8"), ("Content-Length", str(len(data)))]
    )
    return [data]


def make_wsgi_app(bolt_app: App | None, health: Health, *, max_body: int = MAX_BODY) -> WsgiApp:
    """`POST /slack/events` -> Bolt (when given), `GET /healthz` -> `health()` as JSON, else 404.

    Bolt verifies each request's signature and timestamp; bodies over `max_body` get 413
    before Bolt reads them. `/healthz` answers 200 when `health()["status"] == "ok"`, else 503.
    """
    handler = SlackRequestHandler(bolt_app, path=EVENTS_PATH) if bolt_app is not None else None

    def wsgi(environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if path == HEALTH_PATH:
            if method not in ("GET", "HEAD"):
                return _reply(start_response, "405 Method Not Allowed", {"error": "use GET"})
            try:
                report = dict(health())
            except Exception:
                log.exception("health check failed")
                report = {"status": "error"}
            status = "200 OK" if report.get("status") == "ok" else "503 Service Unavailable"
            return _reply(start_response, status, report)
        if path == EVENTS_PATH and handler is not None:
            if method != "POST":
                return _reply(start_response, "405 Method Not Allowed", {"error": "use POST"})
            try:
                length = int(environ.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = -1
            if length < 0 or length > max_body:
                return _reply(start_response, "413 Content Too Large", {"error": "request body too large"})
            return handler(environ, start_response)
        return _reply(start_response, "404 Not Found", {"error": "not found"})

    return wsgi


class HttpService:
    """waitress serving a WSGI app on a background thread; `port` is the bound port (0 picks one)."""

    def __init__(
        self,
        wsgi_app: WsgiApp,
        host: str = "0.0.0.0",
        port: int = 3000,
        *,
        threads: int = 8,
        max_body: int = MAX_BODY,
    ) -> None:
        self.wsgi_app = wsgi_app
        self.host = host
        self.port = port
        self.threads = threads
        self.max_body = max_body
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        from waitress.server import create_server

        self._server = create_server(
            self.wsgi_app,
            host=self.host,
            port=self.port,
            threads=self.threads,
            max_request_body_size=self.max_body,
            ident="kpsbot",
            channel_timeout=30,
        )
        self.port = self._server.effective_port
        self._thread = threading.Thread(target=self._server.run, name="http", daemon=True)
        self._thread.start()
        log.info("serving HTTP on %s:%s (%s, %s)", self.host, self.port, EVENTS_PATH, HEALTH_PATH)

    def stop(self, timeout: float = 3.0) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        from waitress import wasyncore

        deadline = time.monotonic() + timeout
        # Close every socket (listener, keep-alives, trigger) from inside the event loop, which then
        # finds its map empty and returns; closing them from this thread races with select().
        server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        server.task_dispatcher.shutdown(timeout=max(0.1, deadline - time.monotonic()))
        log.info("HTTP server stopped")


class SocketModeService:
    """Bolt's websocket-client Socket Mode handler; it reconnects by itself after drops."""

    def __init__(self, app: App, app_token: str) -> None:
        self.app = app
        self.app_token = app_token
        self._handler: Any = None

    def start(self) -> None:
        from slack_bolt.adapter.socket_mode.websocket_client import SocketModeHandler

        self._handler = SocketModeHandler(self.app, self.app_token)
        self._handler.connect()
        log.info("connected to Slack in Socket Mode")

    def stop(self, timeout: float = 3.0) -> None:
        handler, self._handler = self._handler, None
        if handler is None:
            return
        # close() sends the close frame at once, then joins the thread reading the WebSocket, which
        # can stay blocked in select() on the closed socket until its next ping (10 s). Those threads
        # are daemons, so waiting at most `timeout` keeps the exit within the stop budget.
        closer = threading.Thread(target=handler.close, name="socket-mode-close", daemon=True)
        closer.start()
        closer.join(timeout)
        if closer.is_alive():
            log.info("Socket Mode connection closed; not waiting %.1f s more for its reader thread", timeout)
        else:
            log.info("Socket Mode connection closed")


class SlackStartError(Exception):
    """The Slack side could not start; the message says what to fix, `exit_code` follows SPEC §3."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


SLACK_ERROR_HINTS = {
    "invalid_auth": "check SLACK_BOT_TOKEN / SLACK_APP_TOKEN",
    "not_authed": "check SLACK_BOT_TOKEN / SLACK_APP_TOKEN",
    "token_revoked": "the token was revoked: reinstall the app",
    "account_inactive": "the app was uninstalled: reinstall it",
}


def slack_reason(exc: Exception) -> str:
    """Slack's own error code (`invalid_auth`, …) with a hint when there is one, else the first line."""
    response = getattr(exc, "response", None)
    error = response.get("error") if response is not None and hasattr(response, "get") else None
    if error:
        return f"{error} ({SLACK_ERROR_HINTS[error]})" if error in SLACK_ERROR_HINTS else str(error)
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


@contextmanager
def slack_start_errors(api_url: str, listen: str) -> Iterator[None]:
    """Turns what can go wrong while building and serving the app into one SlackStartError."""
    from urllib.error import URLError

    from slack_bolt.error import BoltError
    from slack_sdk.errors import SlackClientError

    try:
        yield
    except (BoltError, SlackClientError) as exc:
        raise SlackStartError(f"Slack refused to start the bot: {slack_reason(exc)}", 1) from None
    except URLError as exc:  # an OSError too, but it is Slack that cannot be reached
        raise SlackStartError(f"cannot reach Slack at {api_url}: {exc.reason}", 1) from None
    except OSError as exc:
        raise SlackStartError(f"cannot listen on {listen}: {exc.strerror or exc}", 2) from None


def slack_services(app: App, settings: Settings, health: Health, *, host: str = "0.0.0.0") -> list[Service]:
    """Socket Mode (plus `/healthz` when PORT is set) if SLACK_APP_TOKEN is set, else HTTP on PORT."""
    if settings.socket_mode:
        services: list[Service] = [SocketModeService(app, settings.slack_app_token or "")]
        if settings.port_set:
            services.append(HttpService(make_wsgi_app(None, health), host, settings.port))
        return services
    if not settings.slack_signing_secret:
        raise ValueError("HTTP mode needs SLACK_SIGNING_SECRET to verify requests")
    return [HttpService(make_wsgi_app(app, health), host, settings.port)]


# -- running ----------------------------------------------------------------------


def run_services(
    services: Sequence[Service], *, stop: threading.Event | None = None, budget: float = STOP_BUDGET
) -> None:
    """Start `services` in order, block until SIGTERM/SIGINT (or `stop` is set), then stop them in
    reverse order within `budget` seconds in all. Signal handlers are installed only when called
    from the main thread."""
    stop = stop or threading.Event()
    previous = _install_signal_handlers(stop)
    started: list[Service] = []
    try:
        for service in services:
            service.start()
            started.append(service)
        while not stop.wait(0.5):
            pass
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


def serve(
    app: App,
    settings: Settings,
    *,
    health: Health,
    background: Sequence[Service] = (),
    stop: threading.Event | None = None,
    host: str = "0.0.0.0",
) -> None:
    """`kpsbot run`: background services (worker pool, watcher) first, then the Slack side."""
    run_services([*background, *slack_services(app, settings, health, host=host)], stop=stop)


def _install_signal_handlers(stop: threading.Event) -> dict:
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handle(signum: int, frame: Any) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    return {signum: signal.signal(signum, handle) for signum in (signal.SIGTERM, signal.SIGINT)}
