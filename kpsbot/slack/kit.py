"""Block Kit building blocks shared by task pages and notifications (their text comes escaped)."""

from __future__ import annotations

from typing import Any

from kpsbot.slack.text import (
    CONTEXT_TEXT,
    HEADER_TEXT,
    MAX_BLOCKS,
    MESSAGE_TEXT,
    SECTION_TEXT,
    cut,
    inline,
    plain,
)

Message = dict[str, Any]  # {"text": fallback, "blocks": [...]}


def message(fallback: str, blocks: list[dict]) -> Message:
    """A message: `fallback` is plain text from anywhere (KPS, users) and is escaped here, because
    Slack reads the top-level `text` as mrkdwn too; blocks are cut to Slack's limit."""
    return {"text": inline(fallback, MESSAGE_TEXT) or "kpsbot", "blocks": blocks[:MAX_BLOCKS]}


def mrkdwn(text: str, limit: int = SECTION_TEXT) -> dict:
    return {"type": "mrkdwn", "text": cut(text, limit)}


def section(text: str) -> dict:
    return {"type": "section", "text": mrkdwn(text)}


def context(*parts: str) -> dict:
    """One line of small print; empty parts are left out, the rest joined by ` · `."""
    return {"type": "context", "elements": [mrkdwn(" · ".join(p for p in parts if p), CONTEXT_TEXT)]}


def header(text: str) -> dict:
    return {"type": "header", "text": {"type": "plain_text", "text": plain(text, HEADER_TEXT), "emoji": True}}
