"""Block Kit building blocks shared by task pages and notifications (their text comes escaped)."""

from __future__ import annotations

from kpsbot.slack.text import CONTEXT_TEXT, HEADER_TEXT, SECTION_TEXT, cut, plain


def mrkdwn(text: str, limit: int = SECTION_TEXT) -> dict:
    return {"type": "mrkdwn", "text": cut(text, limit)}


def section(text: str) -> dict:
    return {"type": "section", "text": mrkdwn(text)}


def context(*parts: str) -> dict:
    """One line of small print; empty parts are left out, the rest joined by ` · `."""
    return {"type": "context", "elements": [mrkdwn(" · ".join(p for p in parts if p), CONTEXT_TEXT)]}


def header(text: str) -> dict:
    return {"type": "header", "text": {"type": "plain_text", "text": plain(text, HEADER_TEXT), "emoji": True}}
