"""The slow half of `/kps-tasks`: ask KPS (every project, or one), render, and answer through the
`response_url`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, Protocol

from kpsbot.kps.client import KpsError
from kpsbot.kps.listing import Listing, Source, list_all, list_page
from kpsbot.kps.models import TaskStatus
from kpsbot.slack.blocks import (
    PageScope,
    kps_error_text,
    render_kps_error,
    render_notice,
    render_task_page,
    render_task_status,
)
from kpsbot.slack.paging import last_offset
from kpsbot.slack.query import STATUS, Query
from kpsbot.slack.text import inline

log = logging.getLogger(__name__)

INTERNAL_ERROR = ":warning: Something went wrong inside kpsbot; the details are in its log. Try again later."
BUSY = ":hourglass: kpsbot is busy with many requests right now. Try again in a minute."
PAGE_GONE = ":information_source: That page no longer exists: the list has {total} tasks now. Press Refresh."
NOT_FOUND = ":grey_question: No project kpsbot watches knows a task `{task_id}`."


class Catalog(Protocol):
    """The configured projects, as the Slack side sees them."""

    def names(self) -> Sequence[str]:
        """Every configured project's name, resolved or not (the grammar's project words)."""
        ...

    def sources(self) -> Sequence[Source]:
        """The projects whose IDs are known, with their clients, in configured order."""
        ...

    def unresolved(self) -> Mapping[str, str]:
        """Configured names whose ID is not known yet, with why."""
        ...

    def location(self, name: str) -> str:
        """The project's region (or where its endpoint is), for one-project pages."""
        ...


class PageGone(Exception):
    """Previous/Next pointed past the end of a list that has shrunk since."""

    def __init__(self, total: int) -> None:
        super().__init__(total)
        self.total = total


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class TaskReplies:
    """Builds replies from KPS; every failure becomes a short ephemeral message."""

    def __init__(
        self,
        catalog: Catalog,
        *,
        page_size: int,
        stuck_minutes: int = 0,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.catalog = catalog
        self.page_size = page_size
        self.stuck_minutes = stuck_minutes
        self._clock = clock

    # -- what to show -------------------------------------------------------------

    def page(self, query: Query, offset: int, *, clamp: bool) -> dict:
        """The page at `offset`; past the end: the last page if `clamp`, else PageGone. When every
        project asked fails, the first failure is raised (a short error instead of an empty page)."""
        sources, unresolved = self._scope(query)
        listing = self._listing(sources, query, offset)
        if offset and offset >= listing.total and not listing.errors:
            if not clamp:
                raise PageGone(listing.total)
            offset = last_offset(listing.total, self.page_size)
            listing = self._listing(sources, query, offset)
        if sources and len(listing.errors) == len(sources):
            raise next(iter(listing.errors.values()))
        errors = {name: kps_error_text(exc) for name, exc in listing.errors.items()}
        errors.update(
            (name, f"its ID is not known yet ({inline(why, 300)})") for name, why in unresolved.items()
        )
        names = tuple(s.name for s in sources) or tuple(unresolved)
        scope = PageScope(names, self.catalog.location(names[0]) if len(names) == 1 else "")
        return render_task_page(
            listing.tasks,
            listing.total,
            offset,
            self.page_size,
            query,
            scope,
            self._clock(),
            errors=errors,
            stuck_minutes=0 if query.failed else self.stuck_minutes,
        )

    def _scope(self, query: Query) -> tuple[list[Source], dict[str, str]]:
        sources = list(self.catalog.sources())
        unresolved = dict(self.catalog.unresolved())
        if query.project is not None:
            sources = [s for s in sources if s.name == query.project]
            unresolved = {k: v for k, v in unresolved.items() if k == query.project}
        return sources, unresolved

    def _listing(self, sources: Sequence[Source], query: Query, offset: int) -> Listing:
        """Unfiltered lists use the API's own limit/offset in each project; filtered ones walk every
        task, because KPS has no server-side filter."""
        if not query.filtered:
            return list_page(sources, limit=self.page_size, offset=offset, failed=query.failed)
        everything = list_all(sources, failed=query.failed, match=query.matches)
        rows = everything.tasks[offset : offset + self.page_size]
        return Listing(rows, everything.total, everything.errors)

    def status(self, task_id: str) -> dict:
        """One task's status from the project that knows it (asked all at once)."""
        sources = list(self.catalog.sources())

        def ask(source: Source) -> TaskStatus | KpsError:
            try:
                return source.kps.get_task_status(task_id)
            except KpsError as exc:
                return exc

        if len(sources) == 1:
            answers = [ask(sources[0])]
        else:
            with ThreadPoolExecutor(min(4, max(len(sources), 1)), thread_name_prefix="kps-status") as pool:
                answers = list(pool.map(ask, sources))
        for source, answer in zip(sources, answers):
            if isinstance(answer, TaskStatus):
                return render_task_status(answer, source.name, self.catalog.location(source.name))
        failures = [a for a in answers if isinstance(a, KpsError) and a.status not in (400, 404)]
        if failures or len(sources) == 1:
            raise failures[0] if failures else answers[0]  # type: ignore[misc]  # a KpsError
        return render_notice(NOT_FOUND.format(task_id=inline(task_id, 100)))

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
