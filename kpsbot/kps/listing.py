"""Task lists across several projects: one page without fetching every task, or every task; a project
that fails leaves the others' rows and is reported by name."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from kpsbot.kps.client import KpsClient, KpsError
from kpsbot.kps.models import RunningTask, TaskPage

T = TypeVar("T")


@dataclass(frozen=True)
class Source:
    """A project to list: its name (shown) and the client for it."""

    name: str
    kps: KpsClient


@dataclass(frozen=True)
class ProjectTask:
    project: str
    project_id: str
    task: RunningTask


@dataclass(frozen=True)
class Listing:
    tasks: list[ProjectTask]
    total: int  # over the projects that answered
    errors: dict[str, KpsError] = field(default_factory=dict)  # project name -> why it did not


def _each(sources: Sequence[Source], call: Callable[[Source], T]) -> list[T | KpsError]:
    """`call` for every source, a few at a time (the clients' limiter bounds the requests)."""

    def safe(source: Source) -> T | KpsError:
        try:
            return call(source)
        except KpsError as exc:
            return exc

    if len(sources) <= 1:
        return [safe(s) for s in sources]
    with ThreadPoolExecutor(min(4, len(sources)), thread_name_prefix="kps-list") as pool:
        return list(pool.map(safe, sources))


def _listing(failed: bool) -> Callable[[KpsClient, int, int], TaskPage]:
    return (
        (lambda kps, limit, offset: kps.list_failed_tasks(limit, offset))
        if failed
        else (lambda kps, limit, offset: kps.list_running_tasks(limit, offset))
    )


def list_page(sources: Sequence[Source], *, limit: int, offset: int, failed: bool = False) -> Listing:
    """Rows `offset` to `offset + limit` of the projects' lists one after the other, in order.

    Each project is asked for its first `limit` rows (which also gives its `total`); only the
    project or two whose rows the page needs beyond those are asked again, at their own offset.
    """
    fetch = _listing(failed)
    first = _each(sources, lambda s: fetch(s.kps, limit, 0))
    errors = {s.name: r for s, r in zip(sources, first) if isinstance(r, KpsError)}
    rows: list[ProjectTask] = []
    start = 0
    for source, page in zip(sources, first):
        if isinstance(page, KpsError):
            continue
        begin, end = max(offset - start, 0), min(page.total, offset + limit - start)
        start += page.total
        if begin >= end:
            continue
        if begin == 0 and end <= len(page.tasks):
            tasks = page.tasks[:end]
        else:
            try:
                tasks = fetch(source.kps, end - begin, begin).tasks[: end - begin]
            except KpsError as exc:
                errors[source.name] = exc
                continue
        rows.extend(ProjectTask(source.name, source.kps.project_id, task) for task in tasks)
    total = sum(p.total for p in first if not isinstance(p, KpsError))
    return Listing(rows[:limit], total, errors)


def list_all(
    sources: Sequence[Source], *, failed: bool = False, match: Callable[[RunningTask], bool] | None = None
) -> Listing:
    """Every task of every project (filtered by `match`): KPS has no server-side filter."""
    pages = _each(sources, lambda s: s.kps.all_failed_tasks() if failed else s.kps.all_running_tasks())
    errors = {s.name: r for s, r in zip(sources, pages) if isinstance(r, KpsError)}
    rows = [
        ProjectTask(source.name, source.kps.project_id, task)
        for source, page in zip(sources, pages)
        if not isinstance(page, KpsError)
        for task in page.tasks
        if match is None or match(task)
    ]
    return Listing(rows, len(rows), errors)
