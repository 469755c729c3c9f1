"""The terminal's tables: aligned columns, cells cut and made printable, the paging line."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from kpsbot.kps.listing import ProjectTask
from kpsbot.kps.models import RunningTask
from kpsbot.tables import MAX_CELL, render_rows, render_task_table, task_row

STARTED = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
MS = str(int(STARTED.timestamp() * 1000))


def task(task_id: str = "t1", **fields: str) -> RunningTask:
    return RunningTask(task_id, fields.pop("operate_type", "RUNNING_RESET"), MS, **fields)


def test_columns_are_aligned_under_the_header_and_trailing_space_is_dropped():
    text = render_rows(("A", "LONGER"), [("xyz", "1"), ("", "22")])
    assert text.splitlines() == ["A    LONGER", "xyz  1", "     22"]


def test_a_long_cell_is_cut_and_an_unprintable_character_shown_as_a_question_mark():
    [_, row] = render_rows(("NAME",), [("x" * 100,)]).splitlines()
    assert len(row) == MAX_CELL and row.endswith("…")
    assert render_rows(("NAME",), [("web\x1b[31m\n",)]).splitlines()[1] == "web?[31m?"


def test_a_task_row_shows_the_action_local_start_and_how_long_it_has_run():
    row = task_row(
        task(server_name="web-01", server_id="srv-1", keypair_name="kp"), STARTED + timedelta(minutes=5)
    )
    local = STARTED.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    assert row == ("Reset", "web-01", "srv-1", "kp", local, "5m")
    unknown = task_row(RunningTask("t2", "RUNNING_ROTATE", "not a time"), STARTED)
    assert unknown[0] == "RUNNING_ROTATE" and unknown[4:] == ("?", "?")


def test_the_task_table_says_which_rows_of_the_total_it_shows_and_names_projects_when_asked():
    rows = [ProjectTask("cn-north-4", "p1", task("t1")), ProjectTask("ap-southeast-1", "p2", task("t2"))]
    text = render_task_table(rows, total=12, offset=10, now=STARTED)
    assert text.splitlines()[0].split() == [
        "ACTION",
        "SERVER",
        "NAME",
        "SERVER",
        "ID",
        "KEY",
        "PAIR",
        "STARTED",
        "AT",
        "RUNNING",
        "FOR",
    ]
    assert text.splitlines()[-1] == "showing 11-12 of 12"
    lines = render_task_table(rows, total=2, offset=0, now=STARTED, projects=True).splitlines()
    assert (
        lines[0].startswith("PROJECT ")
        and lines[1].startswith("cn-north-4 ")
        and lines[2].startswith("ap-southeast-1 ")
    )


def test_an_empty_page_says_so_with_the_total_if_there_is_one():
    assert render_task_table([], total=0, offset=0, now=STARTED) == "No running tasks."
    assert render_task_table([], total=5, offset=40, now=STARTED) == "No running tasks (total 5)."
