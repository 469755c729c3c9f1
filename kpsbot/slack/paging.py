"""Paging for `/kps-tasks`: the button value codec and the paging maths (pure)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, replace

from kpsbot.slack.query import LIST, MAX_FILTER, Query, parse_command

VERSION = "v2"
MAX_OFFSET = 1_000_000  # the KPS client's own paging ceiling
ALTERED = "This button is from an older or altered message. Run `/kps-tasks` again."


class BadPageValue(ValueError):
    """A button value that is malformed, out of range or about a project no longer configured;
    str() is for users."""


@dataclass(frozen=True)
class PageRef:
    """Which page of which query a button points at."""

    query: Query
    offset: int = 0


def encode_page_value(ref: PageRef) -> str:
    """`v2|<project name or empty>|<offset>|<command text>`: short, readable in logs, re-parsed by the
    grammar. The project has a field of its own, so a value can name one no longer configured."""
    return f"{VERSION}|{ref.query.project or ''}|{ref.offset}|{ref.query.to_text(with_project=False)}"


def decode_page_value(value: object, projects: Collection[str]) -> PageRef:
    parts = value.split("|", 3) if isinstance(value, str) else []  # a tampered payload may send any JSON
    if len(parts) != 4 or parts[0] != VERSION:
        raise BadPageValue(ALTERED)
    _, project, offset_text, text = parts
    if project and project not in projects:
        raise BadPageValue(
            "This button belongs to a message about a project kpsbot no longer watches. "
            "Run `/kps-tasks` again."
        )
    if not offset_text.isdigit() or not offset_text.isascii() or int(offset_text) > MAX_OFFSET:
        raise BadPageValue("This button points at a page that cannot exist. Run `/kps-tasks` again.")
    if len(text) > MAX_FILTER + 40:
        raise BadPageValue(ALTERED)
    query = parse_command(text)  # no project words: the project is the field above
    if query.kind != LIST:
        raise BadPageValue(ALTERED)
    return PageRef(replace(query, project=project or None), int(offset_text))


def last_offset(total: int, page_size: int) -> int:
    """Offset of the last page (0 when there are no rows)."""
    return max(total - 1, 0) // page_size * page_size
