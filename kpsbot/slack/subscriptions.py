"""Channel subscriptions from Slack: `/kps-tasks subscribe …`, `subscriptions`, `unsubscribe <n>|all`."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

from kpsbot.logs import log_context
from kpsbot.slack.blocks import render_notice
from kpsbot.slack.kit import Message, context, message, section
from kpsbot.slack.query import SUBSCRIBE, SUBSCRIPTIONS, UNSUBSCRIBE, Query
from kpsbot.slack.replies import INTERNAL_ERROR, send_notice
from kpsbot.slack.sender import CHANNEL, DeliveryFailure
from kpsbot.slack.text import inline
from kpsbot.store import Store, Subscription

log = logging.getLogger(__name__)

SLACK_ID = re.compile(r"^[A-Z0-9]{2,30}$")
ADMINS_ONLY = (
    ":no_entry: Only the people in KPSBOT_ADMIN_USERS may change this channel's subscriptions. "
    "`/kps-tasks subscriptions` shows them."
)
INVITE = (
    ":no_entry: kpsbot cannot post in this channel ({error}): `/invite @kpsbot` here first, then "
    "subscribe again. Nothing was stored."
)
FIXED = "KPSBOT_CHANNEL"


def describe(projects: Sequence[str], actions: Sequence[str], failures_only: bool, text: str) -> str:
    """`cn-north-4_prod · reset, replace · failures only · matching "db-"` (plain text)."""
    parts = [
        ", ".join(projects) if projects else "every project",
        ", ".join(a.lower() for a in actions) if actions else "every action",
    ]
    if failures_only:
        parts.append("failures only")
    if text:
        parts.append(f'matching "{text}"')
    return " · ".join(parts)


def describe_subscription(subscription: Subscription) -> str:
    return describe(
        subscription.projects, subscription.actions, subscription.failures_only, subscription.text
    )


def _mention(user: str | None) -> str:
    return f"<@{user}>" if user and SLACK_ID.match(user) else "Someone"


class SubscriptionCommands:
    """Changes and lists a channel's subscriptions; the confirmation is posted in the channel."""

    def __init__(
        self,
        store: Store,
        post: Callable[[str, Message], str] | None,
        *,
        fixed_channel: str | None = None,
        admins: Sequence[str] = (),
    ) -> None:
        """`post(channel, message) -> ts` is the notification sender's post (None: no bot token)."""
        self.store = store
        self.post = post
        self.fixed_channel = fixed_channel
        self.admins = tuple(admins)

    def refuses(self, user: str | None, query: Query) -> bool:
        """True if `user` may not make this change (KPSBOT_ADMIN_USERS); anyone allowed may list."""
        return query.kind in (SUBSCRIBE, UNSUBSCRIBE) and bool(self.admins) and user not in self.admins

    def answer(
        self, respond: Callable[..., Any], query: Query, *, user: str | None, channel: str | None
    ) -> None:
        """Answer on a worker thread; any failure (the database, an unexpected Slack error) is a short
        ephemeral error rather than silence, as for task pages."""
        try:
            self._answer(respond, query, user=user, channel=channel)
        except Exception:
            log.exception(
                "cannot answer /kps-tasks %s (user %s, channel %s)",
                query.kind,
                user,
                channel,
                extra=log_context(channel=channel),
            )
            send_notice(respond, render_notice(INTERNAL_ERROR))

    def _answer(
        self, respond: Callable[..., Any], query: Query, *, user: str | None, channel: str | None
    ) -> None:
        if not channel:
            send_notice(
                respond, render_notice(":warning: Subscriptions belong to a channel: run this in one.")
            )
            return
        if query.kind == SUBSCRIPTIONS:
            send_notice(respond, self.listing(channel))
        elif self.refuses(user, query):
            log.info(
                "refused %s for user %s in channel %s (KPSBOT_ADMIN_USERS)",
                query.kind,
                user,
                channel,
                extra=log_context(channel=channel),
            )
            send_notice(respond, render_notice(ADMINS_ONLY))
        elif query.kind == SUBSCRIBE:
            self.subscribe(respond, query, user=user, channel=channel)
        elif query.kind == UNSUBSCRIBE:
            self.unsubscribe(respond, query, user=user, channel=channel)

    # -- subscribe ------------------------------------------------------------------

    def subscribe(self, respond: Callable[..., Any], query: Query, *, user: str | None, channel: str) -> None:
        what = describe(query.projects, query.actions, query.failed, query.text)
        # `failures` lets through only failed finishes and stuck alerts (watch/plan.py Route.wants)
        news = "failed finishes and stuck alerts" if query.failed else "starts, finishes and stuck alerts"
        subscription = self.store.add_subscription(
            channel,
            projects=query.projects,
            actions=query.actions,
            failures_only=query.failed,
            text=query.text,
            created_by=user,
            active=False,  # no poll routes to it before its confirmation is in the channel
        )
        confirmation = message(
            f"Subscribed this channel to KPS key-pair tasks: {what}",
            [
                section(
                    f":bell: {_mention(user)} subscribed this channel to KPS key-pair tasks: "
                    f"*{inline(what, 600)}*"
                ),
                context(
                    f"Subscription {subscription.id} · {news} from the next poll · "
                    "`/kps-tasks subscriptions` lists them"
                ),
            ],
        )
        try:
            if self.post is None:
                raise DeliveryFailure("no SLACK_BOT_TOKEN to post with", CHANNEL)
            self.post(channel, confirmation)
        except DeliveryFailure as exc:
            self.store.remove_subscriptions([subscription.id])
            log.info(
                "subscription for channel %s not stored: cannot post there (%s)",
                channel,
                exc.reason,
                extra=log_context(channel=channel),
            )
            if exc.kind == CHANNEL:
                send_notice(respond, render_notice(INVITE.format(error=inline(exc.reason, 100))))
            else:
                send_notice(
                    respond,
                    render_notice(
                        f":warning: Slack did not take the confirmation ({inline(exc.reason, 100)}); "
                        "nothing was stored. Try again in a minute."
                    ),
                )
            return
        except Exception:
            self.store.remove_subscriptions([subscription.id])  # not stored unless confirmed
            raise
        self.store.activate_subscription(subscription.id)
        log.info(
            "channel %s subscribed by %s: %s (subscription %d)",
            channel,
            user,
            what,
            subscription.id,
            extra=log_context(channel=channel),
        )

    # -- subscriptions --------------------------------------------------------------

    def listing(self, channel: str) -> Message:
        subscriptions = self.store.subscriptions(channel)
        lines = []
        if channel == self.fixed_channel:
            lines.append(f"• *everything* — set by {FIXED} where kpsbot runs; it cannot be removed here")
        lines += [f"• *{s.id}* — {inline(describe_subscription(s), 600)}" for s in subscriptions]
        failing = self.store.failing_channels().get(channel)
        blocks = [
            section(
                "*This channel's KPS subscriptions*\n" + "\n".join(lines)
                if lines
                else "This channel has no KPS subscriptions. `/kps-tasks subscribe` adds one."
            )
        ]
        if failing:
            blocks.append(
                context(
                    f":warning: kpsbot could not post here lately ({inline(failing, 100)}): `/invite @kpsbot`"
                )
            )
        if subscriptions:
            blocks.append(context("`/kps-tasks unsubscribe <number>` or `unsubscribe all` removes them."))
        count = f"{len(lines)} KPS subscription{'' if len(lines) == 1 else 's'}"
        return message(f"{count} in this channel", blocks)

    # -- unsubscribe ----------------------------------------------------------------

    def unsubscribe(
        self, respond: Callable[..., Any], query: Query, *, user: str | None, channel: str
    ) -> None:
        mine = self.store.subscriptions(channel)
        # KPSBOT_CHANNEL keeps getting everything whatever is removed here: say so rather than nothing.
        extra = f" ({FIXED} cannot be removed here)" if channel == self.fixed_channel else ""
        if query.target == "all":
            chosen = mine
        else:
            chosen = [s for s in mine if s.id == int(query.target)]
            if not chosen:
                send_notice(
                    respond,
                    render_notice(
                        f":grey_question: This channel has no subscription {inline(query.target, 12)}"
                        f"{extra}. `/kps-tasks subscriptions` lists them."
                    ),
                )
                return
        if not chosen:
            send_notice(respond, render_notice(f"This channel has no subscriptions to remove{extra}."))
            return
        self.store.remove_subscriptions([s.id for s in chosen])
        numbers = ", ".join(str(s.id) for s in chosen)
        log.info(
            "channel %s unsubscribed by %s: %s", channel, user, numbers, extra=log_context(channel=channel)
        )
        text = f":no_bell: {_mention(user)} removed this channel's KPS subscription {numbers}{extra}"
        try:
            if self.post is None:
                raise DeliveryFailure("no SLACK_BOT_TOKEN to post with", CHANNEL)
            self.post(channel, message(f"Removed KPS subscription {numbers}", [section(text)]))
        except DeliveryFailure:
            send_notice(respond, render_notice(f"Removed subscription {numbers}{extra}."))
