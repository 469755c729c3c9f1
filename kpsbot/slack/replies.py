"""The slow half of `/kps-tasks`: ask KPS, render, and answer through the `response_url`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from kpsbot.kps.client import KpsClient, KpsError
from kpsbot.slack.blocks import render_kps_error, render_notice, render_task_page, render_task_status
from kpsbot.slack.paging import fetch_page, last_offset
from kpsbot.slack.query import STATUS, Query

log = logging.getLogger(__name__)

INTERNAL_ERROR = ":warning: Something went wrong inside kpsbot; the details are in its log. Try again later."
BUSY = ":hourglass: kpsbot is busy with many requests right now. Try again in a minute."
PAGE_GONE = ":information_source: That page no longer exists: the list has {total} tasks now. Press Refresh."


class PageGone(Exception):
    """Previous/Next pointed past the end of a list that has shrunk since."""

    def __init__(self, total: int) -> None:
        super().__init__(total)
        self.total = total


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class TaskReplies:
    """Builds replies from KPS for one project; every failure becomes a short ephemeral message."""

    def __init__(
        self,
        kps: KpsClient,
        *,
        project_id: str,
        location: str,
        page_size: int,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.kps = kps
        self.project_id = project_id
        self.location = location
        self.page_size = page_size
        self._clock = clock

    # -- what to show -------------------------------------------------------------

    def page(self, query: Query, offset: int, *, clamp: bool) -> dict:
        """The page at `offset`; past the end: the last page if `clamp`, else PageGone."""
        tasks, total = fetch_page(self.kps, query, offset, self.page_size)
        if offset and offset >= total:
            if not clamp:
                raise PageGone(total)
            offset = last_offset(total, self.page_size)
            tasks, total = fetch_page(self.kps, query, offset, self.page_size)
        return render_task_page(
            tasks, total, offset, self.page_size, query, self.project_id, self.location, self._clock()
        )

    def status(self, task_id: str) -> dict:
        return render_task_status(self.kps.get_task_status(task_id), self.project_id, self.location)

    # -- answering ------------------------------------------------------------------

    def answer(
        self,
        respond: Callable[..., Any],
        query: Query,
        offset: int = 0,
        *,
        replace: bool = False,
        clamp: bool = True,
        who: str = "",
    ) -> None:
        """Fetch and send a reply: a new ephemeral message, or (`replace`) the button's message."""
        context = f"query={query.to_text()!r} offset={offset} {who}".strip()
        try:
            if query.kind == STATUS:
                message = self.status(query.task_id)
            else:
                message = self.page(query, offset, clamp=clamp)
        except PageGone as gone:
            send_notice(respond, render_notice(PAGE_GONE.format(total=gone.total)))
            return
        except KpsError as exc:
            log.warning(
                "KPS call for /kps-tasks failed (%s): %s error_code=%s request_id=%s",
                context,
                exc,
                exc.error_code,
                exc.request_id,
            )
            send_notice(respond, render_kps_error(exc))
            return
        except Exception:
            log.exception("cannot answer /kps-tasks (%s)", context)
            send_notice(respond, render_notice(INTERNAL_ERROR))
            return
        if replace:
            send(respond, message, replace_original=True)
        else:
            send(respond, message, response_type="ephemeral", replace_original=False)


def send(respond: Callable[..., Any], message: dict, **options: Any) -> bool:
    try:
        respond(**message, **options)
        return True
    except Exception as exc:  # an expired response_url, Slack down: nothing more we can do
        log.warning("cannot deliver a /kps-tasks reply through response_url: %s", exc)
        return False


def send_notice(respond: Callable[..., Any], message: dict) -> bool:
    """An ephemeral notice that leaves the message it answers as it is."""
    return send(respond, message, response_type="ephemeral", replace_original=False)
