"""Builds the Bolt app from its dependencies; nothing is created at import time."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt import App, BoltResponse
from slack_sdk import WebClient

from kpsbot.kps.client import KpsClient
from kpsbot.settings import Settings
from kpsbot.slack import actions, commands
from kpsbot.slack.access import AccessPolicy
from kpsbot.slack.replies import TaskReplies
from kpsbot.slack.retries import RecentKeys, request_key
from kpsbot.slack.workers import WorkerPool

log = logging.getLogger(__name__)


def build_app(
    settings: Settings,
    kps: KpsClient,
    *,
    store: Any = None,
    executor: WorkerPool | None = None,
    client: WebClient | None = None,
    replies: TaskReplies | None = None,
) -> App:
    """The Bolt app for `/kps-tasks` and its buttons.

    `executor` runs the KPS calls and replies (anything with `submit(fn, *args, **kw) -> bool`);
    by default a `WorkerPool` of daemon threads. `store` is accepted for listeners that will need
    the database; the current ones do not. Building the app calls Slack's `auth.test`.
    """
    client = client or WebClient(base_url=settings.slack_api_url, token=settings.slack_bot_token)
    app = App(
        client=client,
        signing_secret=settings.slack_signing_secret or "",
        # Socket Mode requests arrive over an authenticated WebSocket and carry no signature;
        # the HTTP server refuses to start without a signing secret (see server.py).
        request_verification_enabled=bool(settings.slack_signing_secret),
        name="kpsbot",
        logger=logging.getLogger("kpsbot.slack.bolt"),
    )
    work = executor if executor is not None else WorkerPool()
    replies = replies or TaskReplies(
        kps,
        project_id=settings.project_id or kps.project_id,
        location=settings.location,
        page_size=settings.page_size,
    )
    access = AccessPolicy(channels=settings.allowed_channels, users=settings.allowed_users)
    app.middleware(ignore_retries(RecentKeys()))
    commands.register(app, replies=replies, work=work, access=access)
    actions.register(app, replies=replies, work=work, access=access)
    return app


def ignore_retries(seen: RecentKeys):
    """Middleware: a Slack retry of an interaction already received is acked and dropped."""

    def middleware(request, body, next_):  # noqa: ANN001 - Bolt injects by parameter name
        key = request_key(body)
        first = seen.add(key) if key else True
        retry = request.headers.get("x-slack-retry-num")
        if retry and not first:
            log.info("ignoring Slack retry %s of %s", retry[0] if isinstance(retry, list) else retry, key)
            return BoltResponse(status=200, body="")
        return next_()

    return middleware
