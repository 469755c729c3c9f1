"""Block Kit of channel notifications: valid for slack-sdk, escaped, within limits whatever KPS sends."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from support.fake_slack import assert_valid_message

from kpsbot.kps.models import RunningTask
from kpsbot.slack import notifications as note

HOSTILE = RunningTask(
    "<!channel>" * 100, "RUNNING_" + "X" * 5000, "not-a-time", "<@U123>&" * 900, "`" * 3000, "*kp*" * 2000
)
FAILED = {
    "outcome": "failed",
    "error_code": "KPS.2003" * 300,
    "error_msg": "<!here> " * 2000,
    "duration_s": 3725.0,
    "task_status": "FAILED_RESET",
}


def all_messages(task: RunningTask, outcome: dict) -> list[dict]:
    sample = [{"task": task.to_api(), "outcome": outcome["outcome"]}] * 20
    return [
        note.started_message(task),
        note.start_message_finished(task, outcome),
        note.finished_reply(task, outcome),
        note.finished_message(
            task, {**outcome, "start_note": "Already running when kpsbot started watching."}
        ),
        note.stuck_message(
            task, {"running_s": 3700.0, "minutes": 60, "project": "cn-north-4_" + "x" * 300}, in_thread=False
        ),
        note.stuck_message(task, {"running_s": None, "minutes": 60}, in_thread=True),
        note.burst_message("stuck", 10_000, {"Reset": 10_000}, sample, project="p<1>", minutes=60),
        note.burst_message("started", 10_000, {task.operate_type: 9_000, "Reset": 1_000}, sample),
        note.burst_message("finished", 10_000, {"Reset": 10_000}, sample, {"failed": 3, "succeeded": 9_997}),
        note.baseline_message("p" * 500, "cn-north-4", 100_000, {"Reset": 100_000}),
        note.outage_message(1.7e9, 3, "<b>" * 3000, auth_rejected=False),
        note.outage_message(1.7e9, 3, "HTTP 401", auth_rejected=True),
        note.recovery_message(1.7e9, 1.7e9 + 600, 20),
    ]


def test_hostile_values_stay_valid_and_escaped():
    for message in all_messages(HOSTILE, FAILED):
        assert_valid_message(message)
        rendered = str(message)
        assert "<!channel>" not in rendered and "<!here>" not in rendered and "<@U123>" not in rendered


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=300), st.text(max_size=300), st.text(max_size=300))
def test_any_text_gives_a_valid_message(name, kind, error):
    task = RunningTask("t-1", kind, "1700000000000", name, name[::-1], error)
    for message in all_messages(
        task, {"outcome": "failed", "error_code": kind, "error_msg": error, "duration_s": None}
    ):
        assert_valid_message(message)


def test_finished_edit_shows_outcome_duration_and_error():
    task = RunningTask("t-1", "RUNNING_UNBIND", "1700000000000", "web-01", "srv-1", "kp")
    text = note.plain_text(
        note.start_message_finished(
            task, {**FAILED, "error_msg": "server is stopped", "error_code": "KPS.2003"}
        )
    )
    assert "Unbind on web-01: ❌ failed after about 1h 2m" in text
    assert "KPS.2003: server is stopped" in text


def test_plain_text_reads_like_slack():
    task = RunningTask("t-1", "RUNNING_RESET", "1700000000000", "db <1> & co", "srv-1", "kp")
    text = note.plain_text(note.started_message(task))
    assert text.splitlines()[0] == "🔄 Reset started on db <1> & co"
    assert "Started: 2023-11-14 22:13 UTC" in text and "Task: t-1" in text
