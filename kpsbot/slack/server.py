"""Serving the Bolt app: its HTTP routes (`/slack/events`, `/healthz`) in HTTP mode, Bolt's
SocketModeHandler in Socket Mode, and what can go wrong while starting either."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl

from slack_bolt import App, BoltContext, BoltRequest, BoltResponse
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_bolt.request.internals import build_context

from kpsbot.services import HttpService, Service, WsgiApp

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"
MAX_BODY = 64 * 1024  # Slack's payloads are a few KiB; anything this big is not from Slack

Health = Callable[[], dict]
Exposition = Callable[[], tuple[bytes, str]]  # the metrics text, and its content type


# -- HTTP ---------------------------------------------------------------------------


def _reply(
    start_response: Callable[..., Any], status: str, body: Any, content_type: str = "application/json"
) -> list[bytes]:
    data = (json.dumps(body) if content_type == "application/json" else str(body)).encode()
    start_response(
        status, [("Content-Type", f"{content_type}; charset=utf-8"), ("Content-Length", str(len(data)))]
    )
    return [data]


class _FormRequest(BoltRequest):
    """Bolt reads any form body containing the text `payload` as an interactivity payload, so
    `/kps-tasks payload-01` parsed as an empty request (404). A form without a `payload` field is
    read as the form it is; the raw body, which the signature covers, is untouched."""

    def __init__(self, *, body: str, **kwargs: Any) -> None:
        super().__init__(body=body, **kwargs)
        if self.body == {} and body and not body.lstrip().startswith("{"):
            form = dict(parse_qsl(body, keep_blank_values=True))
            if "payload" not in form:
                self.body = form
                self.context = build_context(BoltContext({}), form)


class _SlackRequestHandler(SlackRequestHandler):
    def dispatch(self, request: Any) -> BoltResponse:
        return self.app.dispatch(
            _FormRequest(body=request.get_body(), query=request.query_string, headers=request.get_headers())
        )


def make_wsgi_app(
    bolt_app: App | None, health: Health, *, metrics: Exposition | None = None, max_body: int = MAX_BODY
) -> WsgiApp:
    """`POST /slack/events` -> Bolt (when given), `GET /healthz` -> `health()` as JSON, `GET /metrics`
    -> the Prometheus text (when given), else 404.

    Bolt verifies each request's signature and timestamp; bodies over `max_body` get 413
    before Bolt reads them. `/healthz` answers 200 when `health()["status"] == "ok"`, else 503.
    """
    handler = _SlackRequestHandler(bolt_app, path=EVENTS_PATH) if bolt_app is not None else None

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
        if path == METRICS_PATH and metrics is not None:
            if method not in ("GET", "HEAD"):
                return _reply(start_response, "405 Method Not Allowed", {"error": "use GET"})
            body, content_type = metrics()
            start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
            return [body]
        if path == EVENTS_PATH and handler is not None:
            if method != "POST":
                return _reply(start_response, "405 Method Not Allowed", {"error": "use POST"})
            if not _body_within(environ, max_body):
                return _reply(start_response, "413 Content Too Large", {"error": "request body too large"})
            return handler(environ, start_response)
        return _reply(start_response, "404 Not Found", {"error": "not found"})

    return wsgi


def _body_within(environ: dict, max_body: int) -> bool:
    """Whether the request body fits in `max_body` bytes. A body without Content-Length (chunked) is
    read here, at most one byte past the limit, and handed on as if it had one."""
    raw = environ.get("CONTENT_LENGTH")
    if raw:
        try:
            return 0 <= int(raw) <= max_body
        except ValueError:
            return False
    if "chunked" not in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        return True
    try:
        body = environ["wsgi.input"].read(max_body + 1)
    except OSError:  # the server's own limit (cheroot: "Request Entity Too Large")
        return False
    if len(body) > max_body:
        return False
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    return True


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


def slack_services(
    app: App,
    *,
    app_token: str | None,
    signing_secret: str | None,
    port: int,
    port_set: bool,
    health: Health,
    metrics: Exposition | None = None,
    host: str = "0.0.0.0",
) -> list[Service]:
    """Socket Mode (plus `/healthz` and `/metrics` when PORT is set) if there is an app token, else
    HTTP on PORT."""
    if app_token:
        services: list[Service] = [SocketModeService(app, app_token)]
        if port_set:
            services.append(HttpService(make_wsgi_app(None, health, metrics=metrics), host, port))
        return services
    if not signing_secret:
        raise ValueError("HTTP mode needs SLACK_SIGNING_SECRET to verify requests")
    return [HttpService(make_wsgi_app(app, health, metrics=metrics), host, port)]
