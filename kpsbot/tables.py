"""Plain-text task tables for the terminal (`kpsbot tasks`, `kpsbot demo`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from kpsbot.kps.models import RunningTask
from kpsbot.slack.text import action_label, duration

COLUMNS = ("ACTION", "SERVER NAME", "SERVER ID", "KEY PAIR", "STARTED AT", "RUNNING FOR")
MAX_CELL = 40


def _cell(text: str) -> str:
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def task_row(task: RunningTask, now: datetime) -> tuple[str, ...]:
    started = task.started_at
    return tuple(
        _cell(value)
        for value in (
            action_label(task.action, task.operate_type),
            task.server_name,
            task.server_id,
            task.keypair_name,
            started.astimezone().strftime("%Y-%m-%d %H:%M:%S") if started else "?",
            duration(now - started) if started else "?",
        )
    )


def render_task_table(tasks: Sequence[RunningTask], total: int, offset: int, now: datetime) -> str:
    """Aligned columns and a "showing a-b of TOTAL" line; local time for the start."""
    if not tasks:
        return f"No running tasks (total {total})." if total else "No running tasks."
    rows = [COLUMNS] + [task_row(task, now) for task in tasks]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.append(f"showing {offset + 1}-{offset + len(tasks)} of {total}")
    return "\n".join(lines)
