"""Paging for `/kps-tasks`: the button value codec (pure) and fetching one page of a query."""

from __future__ import annotations

from dataclasses import dataclass

from kpsbot.kps.client import KpsClient
from kpsbot.slack.query import LIST, MAX_FILTER, Query, parse_command

VERSION = "v1"
MAX_OFFSET = 1_000_000  # the KPS client's own paging ceiling


class BadPageValue(ValueError):
    """A button value that is malformed, out of range or from another project; str() is for users."""


@dataclass(frozen=True)
class PageRef:
    """Which page of which query a button points at."""

    query: Query
    offset: int = 0


def encode_page_value(project_id: str, ref: PageRef) -> str:
    """`v1|<project_id>|<offset>|<command text>`: short, readable in logs, re-parsed by the grammar."""
    return f"{VERSION}|{project_id}|{ref.offset}|{ref.query.to_text()}"


def decode_page_value(value: object, project_id: str) -> PageRef:
    parts = value.split("|", 3) if isinstance(value, str) else []  # a tampered payload may send any JSON
    if len(parts) != 4 or parts[0] != VERSION:
        raise BadPageValue("This button is from an older or altered message. Run `/kps-tasks` again.")
    _, project, offset_text, text = parts
    if project != project_id:
        raise BadPageValue(
            "This button belongs to a message about another KPS project. Run `/kps-tasks` again."
        )
    if not offset_text.isdigit() or not offset_text.isascii() or int(offset_text) > MAX_OFFSET:
        raise BadPageValue("This button points at a page that cannot exist. Run `/kps-tasks` again.")
    if len(text) > MAX_FILTER + 40:
        raise BadPageValue("This button is from an older or altered message. Run `/kps-tasks` again.")
    query = parse_command(text)
    if query.kind != LIST:
        raise BadPageValue("This button is from an older or altered message. Run `/kps-tasks` again.")
    return PageRef(query, int(offset_text))


def last_offset(total: int, page_size: int) -> int:
    """Offset of the last page (0 when there are no rows)."""
    return max(total - 1, 0) // page_size * page_size


def fetch_page(kps: KpsClient, query: Query, offset: int, page_size: int) -> tuple[list, int]:
    """(tasks on the page, total matching). Unfiltered lists use the API's own limit/offset;
    filtered ones walk every task, because KPS has no server-side filter."""
    if not query.filtered:
        listing = kps.list_failed_tasks if query.failed else kps.list_running_tasks
        page = listing(page_size, offset)
        return page.tasks[:page_size], page.total
    everything = kps.all_failed_tasks() if query.failed else kps.all_running_tasks()
    matching = [task for task in everything.tasks if query.matches(task)]
    return matching[offset : offset + page_size], len(matching)
