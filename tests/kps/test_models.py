"""Task records: operate_type parsing, epoch-ms times, tolerance of odd rows."""

import zlib
from datetime import datetime, timezone

import pytest

from kpsbot.kps.models import (
    FailedTask,
    MalformedTask,
    RunningTask,
    TaskRecords,
    TaskStatus,
    api_fields,
    listing_fingerprint,
    parse_operate_type,
)


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


def test_pages_added_are_indexed_on_first_use_in_order_and_their_problems_heard_then():
    heard = []
    records = TaskRecords(on_problem=heard.append)
    records.add_page([{"task_id": "a", "task_time": "1"}, {"no": "id"}])
    records.add_page([{"task_id": "a", "task_time": "2"}, {"task_id": "b", "task_time": "3"}])
    assert heard == []  # nothing indexed yet
    assert list(records) == ["a", "b"] and records["a"].task_time == "1"  # the first copy wins
    assert len(heard) == 1 and len(records.skipped) == 1
    records.extend([{"task_id": "c", "task_time": "4"}])
    assert list(records) == ["a", "b", "c"]


def test_a_trusted_listing_answers_its_size_without_indexing():
    records = TaskRecords()
    records.add_page([{"task_id": "a", "task_time": "1"}, {"task_id": "b", "task_time": "2"}])
    records.trust(2)
    assert len(records) == 2 and records.skipped == []
    assert records._pending  # still not indexed
    assert sorted(records.keys()) == ["a", "b"] and not records._pending  # indexed when the tasks are needed


def test_the_listing_fingerprint_changes_with_any_byte_and_with_the_length():
    one = listing_fingerprint(zlib.crc32(b'{"total":1}'), 11)
    assert one == listing_fingerprint(zlib.crc32(b'{"total":1}'), 11)
    assert one != listing_fingerprint(zlib.crc32(b'{"total":2}'), 11)
    assert one != listing_fingerprint(zlib.crc32(b'{"total":1}'), 12)
    assert 0 <= one < 2**63  # an SQLite integer


def test_api_fields_keeps_an_api_row_as_it_is_and_copies_any_other_shape():
    row = {
        "task_id": "t1",
        "operate_type": "RUNNING_RESET",
        "task_time": "1",
        "server_name": "web",
        "server_id": "s1",
        "keypair_name": "kp",
    }
    assert api_fields(row) is row  # exactly the six fields in the API's order: no copy
    extra = {**row, "task_status": "RUNNING_RESET"}
    assert api_fields(extra) == row and api_fields(extra) is not extra
    assert api_fields(dict(reversed(list(row.items())))) == row
    assert api_fields({**row, "task_time": 1}) is None  # needs RunningTask.from_api's coercion
    assert api_fields({**row, "task_id": " t1"}) is None
    assert api_fields(["t1"]) is None
