"""Delivery: sends due outbox entries to Slack (the only code calling its Web API) or to a terminal."""

from __future__ import annotations

import itertools
import json
import logging
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, Protocol

from kpsbot.kps.models import RunningTask
from kpsbot.slack import notifications as note
from kpsbot.store import OutboxEntry, Store

log = logging.getLogger(__name__)

# Slack errors that retrying cannot fix: the configuration must change.
PERMANENT_ERRORS = frozenset(
    {
        "channel_not_found",
        "not_in_channel",
        "invalid_auth",
        "account_inactive",
        "is_archived",
        "token_revoked",
        "token_expired",
        "missing_scope",
        "not_authed",
        "no_permission",
        "restricted_action",
        "ekm_access_denied",
        "team_access_not_granted",
    }
)
# chat.update errors meaning there is nothing left to edit.
GONE_ERRORS = frozenset({"message_not_found", "cant_update_message", "edit_window_closed"})
# Slack-side trouble: stop this round, retry the whole queue later.
SERVER_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)
START_NOTES = {
    "baseline": "Already running when kpsbot started watching.",
    "burst": "Its start was in a summary of many tasks.",
}
MAX_RATE_LIMIT_WAIT = 10.0  # seconds one call may sleep on Retry-After; longer waits go to the next cycle


class DeliveryFailure(Exception):
    """A send that did not happen. `permanent`: never retry; `halt`: stop this round (Slack is in trouble)."""

    def __init__(
        self, reason: str, *, permanent: bool = False, halt: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.halt = halt
        self.retry_after = retry_after


class Sender(Protocol):
    """Where notifications go. `post` returns the message's ts (used for threads and edits)."""

    channel: str

    def post(self, message: note.Message, *, thread_ts: str | None = None) -> str: ...

    def update(self, channel: str, ts: str, message: note.Message) -> None: ...


# -- senders -------------------------------------------------------------------------------


class ConsoleSender:
    """Prints each notification as a person would read it in Slack (for `demo` and channel-less `watch`)."""

    channel = "console"

    def __init__(
        self,
        stream: IO[str] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        show_blocks: bool = False,
    ) -> None:
        self.stream = stream
        self.show_blocks = show_blocks
        self._clock = clock
        self._seq = itertools.count(1)
        self._headlines: dict[str, str] = {}  # ts -> first line, to say which thread a reply is in

    def _print(self, prefix: str, lines: list[str]) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(self._clock()))
        indent = " " * (len(stamp) + 3 + len(prefix))
        out = [f"[{stamp}] {prefix}{lines[0]}"] + [indent + line for line in lines[1:]]
        stream = self.stream or sys.stdout
        stream.write("\n".join(out) + "\n")
        stream.flush()

    def _print_blocks(self, message: note.Message) -> None:
        if self.show_blocks:
            stream = self.stream or sys.stdout
            stream.write(json.dumps(message.get("blocks", []), indent=2, ensure_ascii=False) + "\n")

    def post(self, message: note.Message, *, thread_ts: str | None = None) -> str:
        lines = note.plain_text(message).splitlines() or [message.get("text", "")]
        ts = f"{self._clock():.6f}-{next(self._seq)}"
        if thread_ts:
            about = self._headlines.get(thread_ts)
            self._print("  ↳ ", [f"re {about}: {lines[0]}" if about else lines[0], *lines[1:]])
        else:
            self._headlines[ts] = lines[0]
            self._print("", lines)
        self._print_blocks(message)
        return ts

    def update(self, channel: str, ts: str, message: note.Message) -> None:
        lines = note.plain_text(message).splitlines() or [message.get("text", "")]
        self._headlines[ts] = lines[0]
        self._print("  ✎ edited: ", lines[:1])
        self._print_blocks(message)


class TeeSender:
    """Sends through `primary` (whose ts is stored) and echoes what was delivered to `echo`."""

    def __init__(self, primary: Sender, echo: Sender) -> None:
        self.primary = primary
        self.echo = echo
        self.channel = primary.channel
        self._echo_ts: dict[str, str] = {}  # primary ts -> echo ts, so threads and edits line up

    def post(self, message: note.Message, *, thread_ts: str | None = None) -> str:
        ts = self.primary.post(message, thread_ts=thread_ts)
        echo_thread = self._echo_ts.get(thread_ts, thread_ts) if thread_ts else None
        self._echo_ts[ts] = self.echo.post(message, thread_ts=echo_thread)
        return ts

    def update(self, channel: str, ts: str, message: note.Message) -> None:
        self.primary.update(channel, ts, message)
        self.echo.update(channel, self._echo_ts.get(ts, ts), message)


def slack_retry_handlers(
    max_wait: float = MAX_RATE_LIMIT_WAIT, sleep: Callable[[float], None] = time.sleep, backoff: float = 0.5
) -> list:
    """slack-sdk's retry handlers, with the Retry-After wait bounded so a cycle cannot hang for minutes."""
    from slack_sdk.http_retry.builtin_handlers import (
        ConnectionErrorRetryHandler,
        RateLimitErrorRetryHandler,
        ServerErrorRetryHandler,
    )
    from slack_sdk.http_retry.builtin_interval_calculators import (
        BackoffRetryIntervalCalculator,
        FixedValueRetryIntervalCalculator,
    )

    class BoundedRateLimitHandler(RateLimitErrorRetryHandler):
        def _can_retry(self, *, state, request, response=None, error=None) -> bool:
            return super()._can_retry(state=state, request=request, response=response, error=error) and (
                _retry_after(response) <= max_wait
            )

        def prepare_for_next_attempt(self, *, state, request, response=None, error=None) -> None:
            state.next_attempt_requested = True
            sleep(min(_retry_after(response) + random.random() / 4, max_wait))
            state.increment_current_attempt()

    interval = (
        BackoffRetryIntervalCalculator(backoff) if backoff > 0 else FixedValueRetryIntervalCalculator(0)
    )
    return [
        BoundedRateLimitHandler(max_retry_count=2),
        ServerErrorRetryHandler(max_retry_count=2, interval_calculator=interval),
        ConnectionErrorRetryHandler(max_retry_count=2, interval_calculator=interval),
    ]


def _retry_after(response: Any) -> float:
    for key, value in (getattr(response, "headers", None) or {}).items():
        if key.lower() == "retry-after":
            try:
                return float(value[0] if isinstance(value, list) else value)
            except (TypeError, ValueError, IndexError):
                break
    return 1.0


class SlackSender:
    """chat.postMessage / chat.update through slack-sdk's WebClient, errors sorted for the outbox."""

    def __init__(self, client: Any, channel: str) -> None:
        self.client = client
        self.channel = channel

    @classmethod
    def from_token(
        cls,
        token: str,
        channel: str,
        *,
        base_url: str = "https://slack.com/api/",
        timeout: int = 15,
        max_wait: float = MAX_RATE_LIMIT_WAIT,
    ) -> SlackSender:
        from slack_sdk import WebClient

        client = WebClient(
            token=token, base_url=base_url, timeout=timeout, retry_handlers=slack_retry_handlers(max_wait)
        )
        return cls(client, channel)

    def post(self, message: note.Message, *, thread_ts: str | None = None) -> str:
        args: dict[str, Any] = {
            "channel": self.channel,
            "text": message["text"],
            "blocks": message["blocks"],
            "unfurl_links": False,
            "unfurl_media": False,
        }
        if thread_ts:
            args["thread_ts"] = thread_ts  # and no reply_broadcast: the edited start message is what shows
        response = self._call(self.client.chat_postMessage, args)
        return response["ts"]

    def update(self, channel: str, ts: str, message: note.Message) -> None:
        self._call(
            self.client.chat_update,
            {"channel": channel, "ts": ts, "text": message["text"], "blocks": message["blocks"]},
        )

    @staticmethod
    def _call(method: Callable[..., Any], args: dict[str, Any]) -> Any:
        from slack_sdk.errors import SlackApiError

        try:
            return method(**args)
        except SlackApiError as exc:
            status = getattr(exc.response, "status_code", None)
            error = str(exc.response.get("error") or "") if exc.response is not None else ""
            if status == 429 or error == "ratelimited":
                raise DeliveryFailure(
                    "rate limited by Slack (HTTP 429)", halt=True, retry_after=_retry_after(exc.response)
                ) from None
            if status and status >= 500:
                raise DeliveryFailure(f"Slack answered HTTP {status}", halt=True) from None
            reason = error or f"HTTP {status}"
            raise DeliveryFailure(
                reason,
                permanent=reason in PERMANENT_ERRORS,
                halt=reason in PERMANENT_ERRORS or reason in SERVER_ERRORS,
            ) from None
        except (OSError, ValueError) as exc:  # URLError, timeouts, resets, bodies that are not JSON
            raise DeliveryFailure(f"cannot reach Slack ({type(exc).__name__}: {exc})", halt=True) from None


def sender_for(settings: Any, *, echo: Sender | None = None) -> Sender | None:
    """Slack when SLACK_BOT_TOKEN and KPSBOT_CHANNEL are set (echoed to `echo` if given), else `echo`."""
    if settings.slack_bot_token and settings.channel:
        slack = SlackSender.from_token(
            settings.slack_bot_token, settings.channel, base_url=settings.slack_api_url
        )
        return TeeSender(slack, echo) if echo is not None else slack
    return echo


# -- the outbox ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryReport:
    delivered: int
    pending: int
    failed: int  # entries Slack refused for good (all time, as /healthz shows them)
    error: str | None = None  # why this round's last failed send failed (None: no send failed)


class Deferred(Exception):
    """The entry waits for another one (a reply for its start message's ts)."""


class Outbox:
    """Sends due outbox entries oldest first; records each success at once; backs off on failure."""

    def __init__(
        self,
        store: Store,
        sender: Sender,
        *,
        clock: Callable[[], float] = time.time,
        base_backoff: float = 30.0,
        max_backoff: float = 3600.0,
        max_attempts: int = 20,
        max_per_round: int = 100,
    ) -> None:
        self.store = store
        self.sender = sender
        self.clock = clock
        self.base_backoff = base_backoff
        self.max_backoff = max_backoff
        self.max_attempts = max_attempts
        self.max_per_round = max_per_round
        self._busy = threading.Lock()  # held from an entry's send until its outcome is stored

    def deliver(self, stop: threading.Event | None = None) -> DeliveryReport:
        """Send the due entries; `stop` set ends the round between entries, never inside one."""
        delivered, error = 0, None
        for entry in self.store.due_outbox(self.clock(), limit=self.max_per_round):
            with self._busy:
                if stop is not None and stop.is_set():
                    break
                try:
                    self._send(entry)
                except Deferred:
                    continue
                except DeliveryFailure as exc:
                    self._failed(entry, exc)
                    error = exc.reason
                    if exc.halt:
                        break
                    continue
                except Exception as exc:  # a bug must not stop the queue behind this entry
                    log.exception("cannot deliver the %s notification %s", entry.kind, entry.dedup_key)
                    error = f"{type(exc).__name__}: {exc}"
                    self._failed(entry, DeliveryFailure(error))
                    continue
            delivered += 1
        return DeliveryReport(
            delivered, self.store.pending_deliveries(), self.store.failed_deliveries(), error
        )

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no entry is between its send and its record (call after setting `stop`);
        False if one still was after `timeout` seconds."""
        if not self._busy.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            return False
        self._busy.release()
        return True

    def _failed(self, entry: OutboxEntry, exc: DeliveryFailure) -> None:
        attempts = entry.attempts + 1
        # Slack in trouble (halt) is waited out however long it lasts; only refusals count to the cap.
        if exc.permanent or (not exc.halt and attempts >= self.max_attempts):
            log.error(
                "Slack refused the %s notification %s for good: %s (fix the Slack settings; "
                "it will not be retried)",
                entry.kind,
                entry.dedup_key,
                exc.reason,
            )
            self.store.mark_failed(entry.id, error=exc.reason)
            return
        wait = min(self.base_backoff * 2 ** min(attempts - 1, 30), self.max_backoff)
        wait = max(wait, exc.retry_after or 0)
        log.warning(
            "could not send the %s notification %s (attempt %d): %s; retrying in %.0f s",
            entry.kind,
            entry.dedup_key,
            attempts,
            exc.reason,
            wait,
        )
        self.store.mark_retry(entry.id, error=exc.reason, next_attempt_at=self.clock() + wait)

    def _sent(
        self, entry: OutboxEntry, ts: str | None, *, channel: str | None = None, start_of: str | None = None
    ) -> None:
        self.store.mark_sent(
            entry.id, now=self.clock(), channel=channel or self.sender.channel, ts=ts, start_of=start_of
        )

    def _send(self, entry: OutboxEntry) -> None:
        payload, kind = entry.payload, entry.kind
        if kind == "started":
            ts = self.sender.post(note.started_message(RunningTask(**payload["task"])))
            self._sent(entry, ts, start_of=entry.task_id)
        elif kind == "finished":
            self._send_finished(entry)
        elif kind == "finished_edit":
            self._send_edit(entry)
        else:
            self._sent(entry, self.sender.post(note.render_summary(kind, payload)))

    def _start_message(self, entry: OutboxEntry) -> tuple[str | None, str | None]:
        """(channel, ts) of the task's start message; Deferred while that message is still to be sent.

        A start message on another channel (e.g. printed by the console before Slack was set up)
        counts as none: its ts means nothing to this sender.
        """
        task = self.store.task(entry.task_id) if entry.task_id else None
        if task is None or task.start_kind != "message":
            return None, None
        if task.start_ts:
            if task.start_channel != self.sender.channel:
                return None, None
            return task.start_channel, task.start_ts
        if self.store.outbox_status(f"started:{entry.task_id}") == "pending":
            raise Deferred
        return None, None  # the start message was never delivered

    def _send_finished(self, entry: OutboxEntry) -> None:
        task, outcome = RunningTask(**entry.payload["task"]), entry.payload
        _, ts = self._start_message(entry)
        if ts:
            message = note.finished_reply(task, outcome)
            self._sent(entry, self.sender.post(message, thread_ts=ts))
            return
        message = note.finished_message(task, outcome, note=START_NOTES.get(outcome.get("start_kind"), ""))
        self._sent(entry, self.sender.post(message))

    def _send_edit(self, entry: OutboxEntry) -> None:
        channel, ts = self._start_message(entry)
        if not ts:
            self.store.mark_failed(entry.id, error="no start message to edit", status="skipped")
            return
        message = note.start_message_finished(RunningTask(**entry.payload["task"]), entry.payload)
        try:
            self.sender.update(channel, ts, message)
        except DeliveryFailure as exc:
            if exc.reason in GONE_ERRORS:
                log.warning("start message of task %s can no longer be edited: %s", entry.task_id, exc.reason)
                self.store.mark_failed(entry.id, error=exc.reason, status="skipped")
                return
            raise
        self._sent(entry, ts, channel=channel)
