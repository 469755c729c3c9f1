"""The paging buttons under a task page: Previous, Next and Refresh replace the message in place."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from slack_bolt import App

from kpsbot.logs import log_context
from kpsbot.slack.access import REFUSAL, AccessPolicy
from kpsbot.slack.blocks import NEXT, PREV, REFRESH, render_notice
from kpsbot.slack.paging import BadPageValue, decode_page_value
from kpsbot.slack.replies import BUSY, TaskReplies, send_notice
from kpsbot.slack.workers import WorkerPool

log = logging.getLogger(__name__)


def handle_paging(
    ack: Callable[..., Any],
    respond: Callable[..., Any],
    body: dict,
    action: dict,
    *,
    replies: TaskReplies,
    work: WorkerPool,
    access: AccessPolicy,
) -> None:
    ack()
    user = (body.get("user") or {}).get("id")
    channel = (body.get("channel") or {}).get("id")
    action_id = action.get("action_id")
    if not access.allows(user, channel):
        context = log_context(channel=channel)
        log.info("refused %s for user %s in channel %s (allow-list)", action_id, user, channel, extra=context)
        _submit(work, send_notice, respond, render_notice(REFUSAL))
        return
    try:
        ref = decode_page_value(action.get("value"), replies.catalog.names())
    except BadPageValue as exc:
        log.info("rejected %s value %.80r from user %s: %s", action_id, action.get("value"), user, exc)
        _submit(work, send_notice, respond, render_notice(f":warning: {exc}"))
        return
    # Refresh of a page that has emptied shows the last page; Previous/Next say the page is gone.
    _submit(
        work,
        replies.answer,
        respond,
        ref.query,
        ref.offset,
        replace=True,
        clamp=action_id == REFRESH,
        who=f"user={user} channel={channel} action={action_id}",
    )


def _submit(
    work: WorkerPool, fn: Callable[..., Any], respond: Callable[..., Any], *args: Any, **kwargs: Any
) -> None:
    if not work.submit(fn, respond, *args, **kwargs):
        send_notice(respond, render_notice(BUSY))


def register(app: App, *, replies: TaskReplies, work: WorkerPool, access: AccessPolicy) -> None:
    @app.action(re.compile(f"^({PREV}|{NEXT}|{REFRESH})$"))
    def paging(ack, respond, body, action):  # noqa: ANN001 - Bolt injects by parameter name
        handle_paging(ack, respond, body, action, replies=replies, work=work, access=access)
