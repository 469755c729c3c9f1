"""The `/kps-tasks` slash command: ack at once, then answer from a worker thread."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from slack_bolt import App

from kpsbot.logs import log_context
from kpsbot.slack.access import REFUSAL, AccessPolicy
from kpsbot.slack.blocks import COMMAND, render_help, render_notice
from kpsbot.slack.query import HELP, SUBSCRIBE, SUBSCRIPTIONS, UNSUBSCRIBE, parse_command
from kpsbot.slack.replies import BUSY, TaskReplies
from kpsbot.slack.subscriptions import SubscriptionCommands
from kpsbot.slack.workers import WorkerPool

log = logging.getLogger(__name__)

SUBSCRIPTION_KINDS = (SUBSCRIBE, SUBSCRIPTIONS, UNSUBSCRIBE)
NO_SUBSCRIPTIONS = ":information_source: Channel subscriptions need kpsbot's database; this kpsbot has none."


class CommandMetrics(Protocol):
    def command(self, result: str) -> None: ...


def handle_kps_tasks(
    ack: Callable[..., Any],
    respond: Callable[..., Any],
    command: dict,
    *,
    replies: TaskReplies,
    work: WorkerPool,
    access: AccessPolicy,
    subscriptions: SubscriptionCommands | None = None,
    projects: Callable[[], Sequence[str]] = tuple,
    metrics: CommandMetrics | None = None,
) -> None:
    """The allow-lists first (no KPS call for outsiders), help in the ack itself, the rest on `work`."""
    user, channel = command.get("user_id"), command.get("channel_id")

    def count(result: str) -> None:
        if metrics is not None:
            metrics.command(result)

    if not access.allows(user, channel):
        context = log_context(channel=channel)
        log.info("refused /kps-tasks for user %s in channel %s (allow-list)", user, channel, extra=context)
        ack(**render_notice(REFUSAL), response_type="ephemeral")
        count("refused")
        return
    query = parse_command(command.get("text"), projects())
    if query.kind == HELP:  # answered in the ack itself: no KPS call, no second request
        ack(**render_help(query.problem), response_type="ephemeral")
        count("usage" if query.problem else "help")
        return
    if query.kind in SUBSCRIPTION_KINDS:
        if subscriptions is None:
            ack(**render_notice(NO_SUBSCRIPTIONS), response_type="ephemeral")
            count("error")
            return
        job: Callable[..., Any] = subscriptions.answer
        submitted = work.submit(job, respond, query, user=user, channel=channel)
        result = "refused" if subscriptions.refuses(user, query) else "ok"  # the job says why
    else:
        submitted = work.submit(replies.answer, respond, query, who=f"user={user} channel={channel}")
        result = "ok"
    if submitted:
        ack()
        count(result)
    else:
        ack(**render_notice(BUSY), response_type="ephemeral")
        count("busy")


def register(app: App, **dependencies: Any) -> None:
    """`/kps-tasks` on `app`; `dependencies` are handle_kps_tasks's keyword arguments."""

    @app.command(COMMAND)
    def kps_tasks(ack, respond, command):  # noqa: ANN001 - Bolt injects by parameter name
        handle_kps_tasks(ack, respond, command, **dependencies)
