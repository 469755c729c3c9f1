"""Builds the Bolt app from its dependencies; nothing is created at import time."""

from __future__ import annotations

import logging
from collections.abc import Callable

from slack_bolt import App, BoltRequest, BoltResponse
from slack_bolt.middleware import Middleware
from slack_sdk import WebClient

from kpsbot.slack import actions, commands
from kpsbot.slack import home as home_tab
from kpsbot.slack.access import AccessPolicy
from kpsbot.slack.commands import CommandMetrics
from kpsbot.slack.replies import TaskReplies
from kpsbot.slack.retries import RecentKeys, request_key
from kpsbot.slack.subscriptions import SubscriptionCommands
from kpsbot.slack.workers import WorkerPool

log = logging.getLogger(__name__)


def build_app(
    *,
    client: WebClient,
    signing_secret: str | None,
    replies: TaskReplies,
    access: AccessPolicy,
    work: WorkerPool,
    subscriptions: SubscriptionCommands | None = None,
    home: Callable[[], home_tab.HomeStatus] | None = None,
    metrics: CommandMetrics | None = None,
) -> App:
    """The Bolt app: `/kps-tasks` and its buttons, channel subscriptions, and the Home tab when `home`
    provides its status.

    `work` runs the KPS calls and replies (anything with `submit(fn, *args, **kw) -> bool`), so
    acks never wait for KPS. Building the app calls Slack's `auth.test`.
    """
    app = App(
        client=client,
        signing_secret=signing_secret or "",
        # Socket Mode requests arrive over an authenticated WebSocket and carry no signature;
        # the HTTP server refuses to start without a signing secret (see server.py).
        request_verification_enabled=bool(signing_secret),
        name="kpsbot",
        logger=logging.getLogger("kpsbot.slack.bolt"),
    )
    app.use(IgnoreRetries(RecentKeys()))
    commands.register(
        app,
        replies=replies,
        work=work,
        access=access,
        subscriptions=subscriptions,
        projects=replies.catalog.names,
        metrics=metrics,
    )
    actions.register(app, replies=replies, work=work, access=access)
    if home is not None:
        home_tab.register(app, status=home)
    return app


class IgnoreRetries(Middleware):
    """Acks and drops a Slack retry of an interaction already received, and a button press that names
    no button.

    A class, not a function middleware: Bolt builds every listener argument for a function
    middleware, and building `action` from a payload with an empty `actions` list raises (HTTP 500).
    """

    def __init__(self, seen: RecentKeys) -> None:
        self.seen = seen

    def process(self, *, req: BoltRequest, resp: BoltResponse, next) -> BoltResponse:  # noqa: A002
        body = req.body
        if body.get("type") == "block_actions" and not _has_action(body):
            log.info("ignoring a block_actions payload without an action")
            return BoltResponse(status=200, body="")
        key = request_key(body)
        first = self.seen.add(key) if key else True
        retry = req.headers.get("x-slack-retry-num")
        if retry and not first:
            log.info("ignoring Slack retry %s of %s", retry[0] if isinstance(retry, list) else retry, key)
            return BoltResponse(status=200, body="")
        return next()


def _has_action(body: dict) -> bool:
    actions = body.get("actions")
    return (
        bool(actions)
        and isinstance(actions, list)
        and isinstance(actions[0], dict)
        and (isinstance(actions[0].get("action_id"), str))
    )
