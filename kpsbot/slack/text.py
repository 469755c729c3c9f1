"""Small pure helpers for text that goes into Slack messages: escaping, cutting, dates, durations."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

# Slack's documented limits (https://api.slack.com/reference/block-kit/blocks).
MAX_BLOCKS = 50
SECTION_TEXT = 3000
HEADER_TEXT = 150
CONTEXT_TEXT = 3000
BUTTON_TEXT = 75
BUTTON_VALUE = 2000
MESSAGE_TEXT = 4000  # the top-level `text` fallback; Slack truncates longer ones itself

ACTION_LABELS = {"RESET": "Reset", "REPLACE": "Replace", "UNBIND": "Unbind"}
ACTION_EMOJI = {"RESET": ":arrows_counterclockwise:", "REPLACE": ":key:", "UNBIND": ":scissors:"}


def escape(text: str) -> str:
    """Escape `&`, `<`, `>` so text from KPS or users cannot form mentions or links."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def cut(text: str, limit: int) -> str:
    """Cut to at most `limit` characters, marking the cut with `…`; never splits an `&amp;` entity."""
    if len(text) <= limit:
        return text
    head = text[: max(limit - 1, 0)]
    amp = head.rfind("&")
    if amp != -1 and ";" not in head[amp:] and len(head) - amp < 6:
        head = head[:amp]
    return head + "…"


def safe(text: str | None, limit: int) -> str:
    """Escape then cut: the usual treatment for anything from KPS or from a user."""
    return cut(escape(text or ""), limit)


def plain(text: str | None, limit: int) -> str:
    """For plain_text fields (no mrkdwn parsing): only cut, and drop control characters."""
    cleaned = "".join(ch if ch.isprintable() else " " for ch in (text or ""))
    return cut(cleaned, limit)


def action_label(action: str | None, operate_type: str = "") -> str:
    """Reset / Replace / Unbind, or the raw operate_type when it is of an unknown shape."""
    if action in ACTION_LABELS:
        return ACTION_LABELS[action]
    return operate_type or "Unknown"


def action_emoji(action: str | None) -> str:
    return ACTION_EMOJI.get(action or "", ":grey_question:")


def date_token(when: datetime | None, fallback_format: str = "%Y-%m-%d %H:%M UTC") -> str:
    """`<!date^…>` so each reader sees local time; the fallback is UTC text."""
    if when is None:
        return "unknown time"
    epoch = int(when.timestamp())
    fallback = when.astimezone(timezone.utc).strftime(fallback_format)
    return f"<!date^{epoch}^{{date_short_pretty}} {{time}}|{fallback}>"


def duration(delta: timedelta | float | None) -> str:
    """A short human duration: `45s`, `5m`, `2h 5m`, `3d 4h`."""
    if delta is None:
        return "unknown"
    seconds = int(delta.total_seconds() if isinstance(delta, timedelta) else delta)
    seconds = max(seconds, 0)
    if seconds < 60:
        return f"{seconds}s"
    minutes, _ = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h" if hours else f"{days}d"


def inline(text: str | None, limit: int) -> str:
    """One line of mrkdwn from KPS or a user: control characters dropped, escaped, cut."""
    return safe(plain(text, 4 * limit + 16), limit)


def code(text: str | None, limit: int, empty: str = "`?`") -> str:
    """Inline code for IDs from KPS; backticks are replaced so the span cannot be broken."""
    cleaned = inline((text or "").replace("`", "'"), limit)
    return f"`{cleaned}`" if cleaned else empty
