"""The `/kps-tasks` slash command: ack at once, then answer from a worker thread."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from slack_bolt import App

from kpsbot.slack.access import REFUSAL, AccessPolicy
from kpsbot.slack.blocks import COMMAND, render_help, render_notice
from kpsbot.slack.query import HELP, parse_command
from kpsbot.slack.replies import BUSY, TaskReplies
from kpsbot.slack.workers import WorkerPool

log = logging.getLogger(__name__)


def handle_kps_tasks(
    ack: Callable[..., Any],
    respond: Callable[..., Any],
    command: dict,
    *,
    replies: TaskReplies,
    work: WorkerPool,
    access: AccessPolicy,
) -> None:
    user, channel = command.get("user_id"), command.get("channel_id")
    if not access.allows(user, channel):
        log.info("refused /kps-tasks for user %s in channel %s (allow-list)", user, channel)
        ack(**render_notice(REFUSAL), response_type="ephemeral")
        return
    query = parse_command(command.get("text"))
    if query.kind == HELP:  # answered in the ack itself: no KPS call, no second request
        ack(**render_help(query.problem), response_type="ephemeral")
        return
    who = f"user={user} channel={channel}"
    if work.submit(replies.answer, respond, query, who=who):
        ack()
    else:
        ack(**render_notice(BUSY), response_type="ephemeral")


def register(app: App, *, replies: TaskReplies, work: WorkerPool, access: AccessPolicy) -> None:
    @app.command(COMMAND)
    def kps_tasks(ack, respond, command):  # noqa: ANN001 - Bolt injects by parameter name
        handle_kps_tasks(ack, respond, command, replies=replies, work=work, access=access)
