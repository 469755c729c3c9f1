"""A fake Slack Web API and response_url receiver on loopback, recording calls and injecting faults."""

from __future__ import annotations

import json
import random
import threading
import time
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from slack_sdk.models.blocks import Block
from slack_sdk.models.views import View

from kpsbot.simulator.loopback import BackgroundHTTPServer, QuietHandler

MAX_BLOCKS = 50
MAX_VIEW_BLOCKS = 100  # modals and Home tabs
MAX_VIEW_BYTES = 250_000  # views.publish answers view_too_large above this
MAX_TEXT = 4000
FAULT_KINDS = ("ratelimited", "server_error", "error")
JSON_ARGS = ("blocks", "attachments", "metadata", "view")
RESPONSE_URL = "response_url"  # the `method` name faults use to target response_url posts
CONNECTIONS_OPEN = "apps.connections.open"  # called with the app-level token, not the bot token
AUTH_TEST = {
    "ok": True,
    "url": "https://fake.slack.com/",
    "team": "T",
    "user": "kpsbot",
    "team_id": "T000",
    "user_id": "U000BOT",
    "bot_id": "B000",
    "is_enterprise_install": False,
}


def assert_valid_message(body: dict) -> None:
    """Fail unless `body` is a message Slack and slack-sdk's block models accept."""
    text = body.get("text")
    assert isinstance(text, str) and text.strip(), f"message has no top-level text: {body!r:.300}"
    assert len(text) <= MAX_TEXT, f"text is {len(text)} characters, over Slack's {MAX_TEXT}"
    blocks = body.get("blocks") or []
    if isinstance(blocks, str):
        blocks = json.loads(blocks)
    _assert_valid_blocks(blocks, MAX_BLOCKS)


def assert_valid_view(view: dict) -> None:
    """Fail unless `view` is a Home tab view Slack and slack-sdk's View and block models accept."""
    assert isinstance(view, dict), f"view is not an object: {view!r:.300}"
    assert view.get("type") == "home", f"view type is {view.get('type')!r}, not 'home'"
    unknown = set(view) - View.attributes
    assert not unknown, f"view has unknown fields {sorted(unknown)}"
    size = len(json.dumps(view).encode())
    assert size <= MAX_VIEW_BYTES, f"view is {size} bytes, over Slack's {MAX_VIEW_BYTES}"
    blocks = view.get("blocks")
    assert isinstance(blocks, list) and blocks, f"a view needs at least one block: {blocks!r:.300}"
    model = View(**view)
    model.validate_json()
    model.to_dict()
    _assert_valid_blocks(blocks, MAX_VIEW_BLOCKS)


def _assert_valid_blocks(blocks: Any, max_blocks: int) -> None:
    assert isinstance(blocks, list), f"blocks is not a list: {blocks!r:.300}"
    assert len(blocks) <= max_blocks, f"{len(blocks)} blocks, over Slack's {max_blocks}"
    for index, raw in enumerate(blocks):
        assert isinstance(raw, dict), f"block {index} is not an object: {raw!r:.300}"
        block = Block.parse(raw)
        assert block is not None, f"block {index} has an unknown type: {raw!r:.300}"
        unknown = set(raw) - block.attributes - {"type"}
        assert not unknown, f"block {index} ({raw.get('type')}) has unknown fields {sorted(unknown)}"
        # validate_json() checks only the block itself; to_dict() re-validates every nested object.
        block.validate_json()
        block.to_dict()


def _ts(serial: int) -> str:
    micros = serial * 100
    return f"{1_700_000_000 + micros // 1_000_000}.{micros % 1_000_000:06d}"


class _SlackHandler(QuietHandler):
    fake: FakeSlack

    def do_POST(self) -> None:
        self._dispatch()

    def do_GET(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        try:
            body = self.read_body()
            status, payload, headers = self.fake._handle(self.command, self.path, self.headers, body)
            self.send_json(status, payload, headers)
        except (ConnectionError, TimeoutError):
            self.close_connection = True


class FakeSlack:
    """Answers Slack Web API methods under `.url` and records them; `.calls` holds only delivered calls."""

    def __init__(
        self,
        bot_token: str | None = None,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        app_token: str | None = None,
        socket_mode: Any = None,
    ):
        self.bot_token = bot_token
        self.app_token = app_token  # checked by apps.connections.open when set
        # A support.fake_socket_mode.FakeSocketMode: apps.connections.open hands out its URL.
        self.socket_mode = socket_mode
        self.host = host
        self.port = port
        self.calls: list[dict] = []
        self.failed_calls: list[dict] = []
        self.responses: list[dict] = []
        self.messages: dict[tuple[str, str], dict] = {}  # (channel, ts) -> the message as last posted/updated
        self.home_views: dict[str, dict] = {}  # user_id -> the Home tab view as last published
        self.fault_ratio = 0.0
        self.fault_kinds: tuple[str, ...] = FAULT_KINDS
        self.fault_methods: tuple[str, ...] | None = None  # None: every Web API method
        self._rng = random.Random(seed)
        self._faults: list[dict] = []
        self._serial = 0
        self._cond = threading.Condition()
        self._httpd: BackgroundHTTPServer | None = None

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> FakeSlack:
        if self._httpd is None:
            handler = type("BoundSlackHandler", (_SlackHandler,), {"fake": self})
            self._httpd = BackgroundHTTPServer((self.host, self.port), handler)
            self.port = self._httpd.server_address[1]
            self._httpd.start_background("fake-slack")
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.stop_background()
            self._httpd = None

    def __enter__(self) -> FakeSlack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/api/"

    def response_url(self, name: str = "x") -> str:
        return f"http://{self.host}:{self.port}/response/{name}"

    # -- faults -------------------------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        status: int | None = None,
        *,
        error: str | None = None,
        retry_after: int = 1,
        method: str | None = None,
        channel: str | None = None,
    ) -> None:
        """Fail the next `n` calls (to `method`, or to any Web API method; "response_url" for those;
        only calls about `channel` when it is given).

        `error` answers HTTP 200 `{"ok": false, "error": ...}`; status 429 adds `Retry-After`;
        any other status (500 by default) answers that status.
        """
        fault = {"status": status or (200 if error else 500), "error": error, "retry_after": retry_after}
        with self._cond:
            self._faults.extend(dict(fault, method=method, channel=channel) for _ in range(n))

    def _take_fault(self, method: str, channel: str | None = None) -> dict | None:
        for index, fault in enumerate(self._faults):
            if fault.get("channel") is not None and fault["channel"] != channel:
                continue
            if fault["method"] == method or (fault["method"] is None and method != RESPONSE_URL):
                return self._faults.pop(index)
        if self.fault_ratio <= 0 or method == RESPONSE_URL:
            return None
        if self.fault_methods is not None and method not in self.fault_methods:
            return None
        if self._rng.random() >= self.fault_ratio:
            return None
        kind = self._rng.choice(self.fault_kinds)
        if kind == "ratelimited":
            return {"status": 429, "error": None, "retry_after": 1}
        if kind == "server_error":
            return {"status": 500, "error": None, "retry_after": 1}
        return {"status": 200, "error": "internal_error", "retry_after": 1}

    # -- records --------------------------------------------------------------------

    def calls_to(self, method: str) -> list[dict]:
        with self._cond:
            return [call for call in self.calls if call["method"] == method]

    def wait_for_calls(self, method: str, n: int, timeout: float = 10) -> list[dict]:
        """Block until at least `n` delivered calls to `method`; AssertionError on timeout."""
        with self._cond:
            done = self._cond.wait_for(lambda: len(self.calls_to(method)) >= n, timeout)
            found = self.calls_to(method)
        assert done, f"expected {n} {method} calls within {timeout} s, got {len(found)}"
        return found

    def wait_for_responses(self, n: int, timeout: float = 10) -> list[dict]:
        with self._cond:
            done = self._cond.wait_for(lambda: len(self.responses) >= n, timeout)
            found = list(self.responses)
        assert done, f"expected {n} response_url posts within {timeout} s, got {len(found)}"
        return found

    # -- HTTP -----------------------------------------------------------------------

    def _handle(self, verb: str, raw_path: str, headers: Any, body: bytes) -> tuple[int, dict, list]:
        parts = urlsplit(raw_path)
        now = time.time()
        if parts.path.startswith("/response/"):
            return self._response(unquote(parts.path[len("/response/") :]), body, now)
        if not parts.path.startswith("/api/"):
            return 404, {"ok": False, "error": "unknown_method"}, []
        method = parts.path[len("/api/") :]
        args = self._parse_args(parts.query, headers.get("Content-Type") or "", body)
        token = args.pop("token", None)
        authorization = headers.get("Authorization") or ""
        if authorization.startswith("Bearer "):
            token = authorization[len("Bearer ") :]
        call = {"method": method, "args": args, "token": token, "at": now}
        with self._cond:
            fault = self._take_fault(method, args.get("channel"))
            expected = self.app_token if method == CONNECTIONS_OPEN else self.bot_token
            if fault is None and expected is not None and token != expected:
                fault = {"status": 200, "error": "invalid_auth", "retry_after": 1}
            if fault is None:
                status, payload = 200, self._answer(method, args)
            else:
                status, payload = fault["status"], {"ok": False, "error": fault["error"] or "fatal_error"}
                if status == 429:
                    payload["error"] = "ratelimited"
            if payload.get("ok"):
                self.calls.append(call)
            else:
                self.failed_calls.append(dict(call, status=status, error=payload["error"]))
            self._cond.notify_all()
        extra = [("Retry-After", str(fault["retry_after"]))] if fault and status == 429 else []
        return status, payload, extra

    def _response(self, name: str, body: bytes, now: float) -> tuple[int, dict, list]:
        try:
            payload: Any = json.loads(body)
        except ValueError:
            payload = body.decode("utf-8", "replace")
        with self._cond:
            fault = self._take_fault(RESPONSE_URL)
            if fault is not None:
                return fault["status"], {"ok": False, "error": fault["error"] or "fatal_error"}, []
            self.responses.append({"name": name, "body": payload, "at": now})
            self._cond.notify_all()
        return 200, {"ok": True}, []

    @staticmethod
    def _parse_args(query: str, content_type: str, body: bytes) -> dict:
        args: dict[str, Any] = dict(parse_qsl(query, keep_blank_values=True))
        if body:
            if content_type.startswith("application/json"):
                parsed = json.loads(body)
                if isinstance(parsed, dict):
                    args.update(parsed)
            else:
                args.update(parse_qsl(body.decode(), keep_blank_values=True))
        for key in JSON_ARGS:
            if isinstance(args.get(key), str):
                try:
                    args[key] = json.loads(args[key])
                except ValueError:
                    pass
        return args

    def _answer(self, method: str, args: dict) -> dict:
        channel = args.get("channel")
        if method == "auth.test":
            return dict(AUTH_TEST)
        if method == CONNECTIONS_OPEN and self.socket_mode is not None:
            return {"ok": True, "url": self.socket_mode.issue_url()}
        if method in ("chat.postMessage", "chat.postEphemeral"):
            self._serial += 1
            ts = _ts(self._serial)
            message = {
                "type": "message",
                "user": AUTH_TEST["user_id"],
                "bot_id": AUTH_TEST["bot_id"],
                "text": args.get("text", ""),
                "blocks": args.get("blocks", []),
                "ts": ts,
            }
            if args.get("thread_ts"):
                message["thread_ts"] = args["thread_ts"]
            if method == "chat.postEphemeral":
                return {"ok": True, "message_ts": ts}
            self.messages[(channel, ts)] = message
            return {"ok": True, "channel": channel, "ts": ts, "message": message}
        if method == "chat.update":
            ts = args.get("ts")
            message = self.messages.get((channel, ts))
            if message is None:
                return {"ok": False, "error": "message_not_found"}
            message.update(
                text=args.get("text", message["text"]), blocks=args.get("blocks", message["blocks"])
            )
            return {"ok": True, "channel": channel, "ts": ts, "text": message["text"], "message": message}
        if method == "views.publish":
            return self._publish(args)
        return {"ok": True}

    def _publish(self, args: dict) -> dict:
        """views.publish: the view as Slack stores it; `invalid_arguments` for what Slack refuses."""
        view, user = args.get("view"), args.get("user_id")
        if not isinstance(user, str) or not user:
            return {"ok": False, "error": "invalid_arguments", "response_metadata": {"messages": ["user_id"]}}
        blocks = view.get("blocks") if isinstance(view, dict) else None
        if (
            not isinstance(blocks, list)
            or view.get("type") != "home"
            or not 0 < len(blocks) <= MAX_VIEW_BLOCKS
        ):
            return {"ok": False, "error": "invalid_arguments", "response_metadata": {"messages": ["view"]}}
        if len(json.dumps(view).encode()) > MAX_VIEW_BYTES:
            return {"ok": False, "error": "view_too_large"}
        self._serial += 1
        stored = {
            "id": f"V{self._serial:08d}",
            "team_id": AUTH_TEST["team_id"],
            "type": "home",
            "blocks": blocks,
            "private_metadata": view.get("private_metadata", ""),
            "callback_id": view.get("callback_id", ""),
            "state": {"values": {}},
            "hash": f"{int(time.time())}.{self._serial:08d}",
            "clear_on_close": False,
            "notify_on_close": False,
            "root_view_id": f"V{self._serial:08d}",
            "previous_view_id": None,
            "app_id": "A000",
            "external_id": view.get("external_id", ""),
            "bot_id": AUTH_TEST["bot_id"],
        }
        self.home_views[user] = stored
        return {"ok": True, "view": stored}
