"""Plain-text tables for the terminal (`kpsbot tasks`, `kpsbot projects`, `kpsbot demo`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from kpsbot.kps.listing import ProjectTask
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


def render_rows(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Aligned columns under a header line."""
    table = [tuple(columns)] + [tuple(_cell(cell) for cell in row) for row in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table)


def render_task_table(
    tasks: Sequence[ProjectTask], total: int, offset: int, now: datetime, *, projects: bool = False
) -> str:
    """Aligned columns and a "showing a-b of TOTAL" line; local time for the start; a PROJECT
    column when the tasks come from several projects."""
    if not tasks:
        return f"No running tasks (total {total})." if total else "No running tasks."
    columns = (("PROJECT",) if projects else ()) + COLUMNS
    rows = [((row.project,) if projects else ()) + task_row(row.task, now) for row in tasks]
    return f"{render_rows(columns, rows)}\nshowing {offset + 1}-{offset + len(tasks)} of {total}"
