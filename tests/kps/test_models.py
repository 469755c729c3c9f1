"""Task records: operate_type parsing, epoch-ms times, tolerance of odd rows."""

from datetime import datetime, timezone

import pytest

from kpsbot.kps.models import FailedTask, MalformedTask, RunningTask, TaskStatus, parse_operate_type


@pytest.mark.parametrize(
    "value, expected",
    [
        ("RUNNING_RESET", ("RUNNING", "RESET")),
        ("FAILED_REPLACE", ("FAILED", "REPLACE")),
        ("SUCCESS_UNBIND", ("SUCCESS", "UNBIND")),
        ("running_reset", ("RUNNING", "RESET")),
        ("RESET", (None, None)),
        ("RUNNING_REBOOT", (None, None)),
        ("", (None, None)),
        ("_RESET", (None, "RESET")),
        ("SOME_NEW_STATE_UNBIND", ("SOME_NEW_STATE", "UNBIND")),
    ],
)
def test_parse_operate_type(value, expected):
    assert parse_operate_type(value) == expected


def test_running_task_from_documented_example():
    task = RunningTask.from_api(
        {
            "task_id": "cfa6a0f6-2b5a-4b4a-8b2d-2b8bc2e8d8f1",
            "operate_type": "RUNNING_RESET",
            "task_time": "1523342130000",
            "server_name": "ecs-1",
            "server_id": "c9aa197b-a6b6-4c33-b3a6-fa0b4ec50006",
            "keypair_name": "KeyPair-8a6f",
            "unexpected": {"extra": True},
        }
    )
    assert task.action == "RESET"
    assert task.started_at == datetime(2018, 4, 10, 6, 35, 30, tzinfo=timezone.utc)
    assert task.to_api()["keypair_name"] == "KeyPair-8a6f"
    assert "unexpected" not in task.to_api()


@pytest.mark.parametrize(
    "record",
    [
        {"task_id": "t1"},
        {"task_id": "t1", "task_time": None, "server_name": None},
        {"task_id": "t1", "task_time": "yesterday", "operate_type": 7},
        {"task_id": 12345, "task_time": 1523342130000},
    ],
)
def test_missing_and_odd_fields_are_tolerated(record):
    task = RunningTask.from_api(record)
    assert task.task_id
    assert isinstance(task.server_name, str)


@pytest.mark.parametrize("record", [None, "t1", [], {"server_name": "x"}, {"task_id": "  "}])
def test_rows_without_identity_are_malformed(record):
    with pytest.raises(MalformedTask):
        RunningTask.from_api(record)


def test_unknown_operate_type_kept_as_is():
    task = RunningTask.from_api({"task_id": "t", "operate_type": "RUNNING_ROTATE"})
    assert task.action is None
    assert task.operate_type == "RUNNING_ROTATE"


def test_failed_task_carries_error():
    task = FailedTask.from_api(
        {
            "task_id": "t",
            "operate_type": "FAILED_UNBIND",
            "task_error_code": "KPS.2003",
            "task_error_msg": "server is not running",
        }
    )
    assert (task.action, task.task_error_code, task.task_error_msg) == (
        "UNBIND",
        "KPS.2003",
        "server is not running",
    )


@pytest.mark.parametrize(
    "status, state",
    [
        ("READY_RESET", "READY"),
        ("RUNNING_REPLACE", "RUNNING"),
        ("SUCCESS_UNBIND", "SUCCESS"),
        ("FAILED_RESET", "FAILED"),
        ("WEIRD", None),
    ],
)
def test_task_status_states(status, state):
    parsed = TaskStatus.from_api({"task_id": "t", "task_status": status, "server_id": "s"})
    assert parsed.state == state


@pytest.mark.parametrize("model", [RunningTask, FailedTask])
def test_to_api_has_every_field_and_round_trips(model):
    from dataclasses import fields

    record = {f.name: f"value-{f.name}" for f in fields(model)}
    task = model.from_api(record)
    assert task.to_api() == record
