"""The one sender of notifications to Slack's Web API (chat.postMessage, chat.update), with Slack's
answers sorted into what the outbox should do next."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

from kpsbot.slack.notifications import Message

log = logging.getLogger(__name__)

MAX_RATE_LIMIT_WAIT = 10.0  # seconds one call may sleep on Retry-After; longer waits pause the channel

# What a failure means for the outbox, and the reason label /metrics gives it (as Alertmanager names them).
RATE_LIMITED, SERVER, CONNECTION, AUTH, CHANNEL, GONE, CLIENT = (
    "rate_limited",
    "server",
    "connection",
    "auth",
    "channel",
    "gone",
    "client",
)
REASONS = ("rateLimited", "serverError", "clientError", "authError", "other")

# Slack errors of the whole token: nothing can be posted anywhere until the configuration changes.
AUTH_ERRORS = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "missing_scope",
        "no_permission",
        "ekm_access_denied",
        "team_access_not_granted",
        "org_login_required",
    }
)
# Slack errors of one channel: that channel fails for good (until the bot is invited back).
CHANNEL_ERRORS = frozenset(
    {"channel_not_found", "not_in_channel", "is_archived", "restricted_action", "channel_is_archived"}
)
# chat.update errors meaning there is nothing left to edit.
GONE_ERRORS = frozenset({"message_not_found", "cant_update_message", "edit_window_closed"})
# Slack-side trouble under HTTP 200: try again later.
SERVER_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)


class DeliveryFailure(Exception):
    """A send that did not happen; `kind` says what the outbox should do (retry, pause the channel,
    give the channel up, stop everything) and `reason` is a short text for logs and /healthz."""

    def __init__(
        self, reason: str, kind: str = CLIENT, *, retry_after: float | None = None, metric: str = "other"
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind
        self.retry_after = retry_after
        self.metric_reason = metric  # one of REASONS


def _retry_after(response: Any) -> float:
    for key, value in (getattr(response, "headers", None) or {}).items():
        if key.lower() == "retry-after":
            try:
                return float(value[0] if isinstance(value, list) else value)
            except (TypeError, ValueError, IndexError):
                break
    return 1.0


def slack_retry_handlers(
    max_wait: float = MAX_RATE_LIMIT_WAIT, sleep: Callable[[float], None] = time.sleep, backoff: float = 0.5
) -> list:
    """slack-sdk's retry handlers, with the Retry-After wait bounded so one call cannot hang for minutes
    (a longer wait comes back as a rate-limit failure, and the outbox pauses that channel)."""
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
        def can_retry(self, *, state, request, response=None, error=None) -> bool:  # noqa: ANN001
            return super().can_retry(state=state, request=request, response=response, error=error) and (
                _retry_after(response) <= max_wait
            )

        def prepare_for_next_attempt(self, *, state, request, response=None, error=None) -> None:  # noqa: ANN001
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


class SlackSender:
    """chat.postMessage / chat.update through slack-sdk's WebClient, errors sorted for the outbox."""

    def __init__(self, client: Any) -> None:
        self.client = client

    @classmethod
    def from_token(
        cls,
        token: str,
        *,
        base_url: str = "https://slack.com/api/",
        timeout: int = 15,
        max_wait: float = MAX_RATE_LIMIT_WAIT,
    ) -> SlackSender:
        from slack_sdk import WebClient

        client = WebClient(
            token=token, base_url=base_url, timeout=timeout, retry_handlers=slack_retry_handlers(max_wait)
        )
        return cls(client)

    def post(
        self, channel: str, message: Message, *, thread_ts: str | None = None, broadcast: bool = False
    ) -> str:
        """Post `message`; in a thread when `thread_ts` is given, shown in the channel too if `broadcast`."""
        args: dict[str, Any] = {
            "channel": channel,
            "text": message["text"],
            "blocks": message["blocks"],
            "unfurl_links": False,
            "unfurl_media": False,
        }
        if thread_ts:
            args["thread_ts"] = thread_ts
            if broadcast:
                args["reply_broadcast"] = True
        response = _call(self.client.chat_postMessage, args)
        return str(response["ts"])

    def update(self, channel: str, ts: str, message: Message) -> None:
        _call(
            self.client.chat_update,
            {"channel": channel, "ts": ts, "text": message["text"], "blocks": message["blocks"]},
        )


def _call(method: Callable[..., Any], args: dict[str, Any]) -> Any:
    from slack_sdk.errors import SlackApiError

    try:
        return method(**args)
    except SlackApiError as exc:
        raise classify_slack_error(exc) from None
    except (OSError, ValueError) as exc:  # URLError, timeouts, resets, bodies that are not JSON
        raise DeliveryFailure(f"cannot reach Slack ({type(exc).__name__}: {exc})", CONNECTION) from None


def classify_slack_error(exc: Exception) -> DeliveryFailure:
    """A slack-sdk SlackApiError as a DeliveryFailure of the right kind."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    error = str(response.get("error") or "") if response is not None else ""
    if status == 429 or error == "ratelimited":
        return DeliveryFailure(
            "rate limited by Slack (HTTP 429)",
            RATE_LIMITED,
            retry_after=_retry_after(response),
            metric="rateLimited",
        )
    if status and status >= 500:
        return DeliveryFailure(f"Slack answered HTTP {status}", SERVER, metric="serverError")
    reason = error or f"HTTP {status}"
    if reason in AUTH_ERRORS:
        return DeliveryFailure(reason, AUTH, metric="authError")
    metric = "clientError" if error else "other"  # any other `ok: false` answer
    for errors, kind in ((CHANNEL_ERRORS, CHANNEL), (GONE_ERRORS, GONE), (SERVER_ERRORS, SERVER)):
        if reason in errors:
            return DeliveryFailure(reason, kind, metric=metric)
    return DeliveryFailure(reason, CLIENT, metric=metric)
