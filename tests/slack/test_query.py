"""The /kps-tasks grammar, as a table of what users type."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kpsbot.kps.models import RunningTask
from kpsbot.slack.query import HELP, LIST, MAX_FILTER, STATUS, Query, parse_command


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", Query()),
        (None, Query()),
        ("   ", Query()),
        ("help", Query(kind=HELP)),
        ("HELP", Query(kind=HELP)),
        ("help me please", Query(kind=HELP)),
        ("failed", Query(failed=True)),
        ("Failed", Query(failed=True)),
        ("reset", Query(action="RESET")),
        ("REPLACE", Query(action="REPLACE")),
        ("unbind", Query(action="UNBIND")),
        ("web-", Query(text="web-")),
        ("reset web-", Query(action="RESET", text="web-")),
        ("web- reset", Query(action="RESET", text="web-")),
        ("failed unbind db", Query(failed=True, action="UNBIND", text="db")),
        ("reset replace", Query(action="RESET", text="replace")),
        ("failed failed", Query(failed=True, text="failed")),
        ("web   01", Query(text="web 01")),
        ("x" * 500, Query(text="x" * MAX_FILTER)),
        ("status abc-123", Query(kind=STATUS, task_id="abc-123")),
        ("STATUS abc", Query(kind=STATUS, task_id="abc")),
        ("resets", Query(text="resets")),
        ("<!channel>", Query(text="<!channel>")),
    ],
)
def test_parse_command(text, expected):
    assert parse_command(text) == expected


@pytest.mark.parametrize("text", ["status", "status a b"])
def test_status_without_exactly_one_id_is_a_usage_hint(text):
    query = parse_command(text)
    assert query.kind == HELP
    assert "task ID" in query.problem


TASK = RunningTask("t-42", "RUNNING_RESET", "1523342130000", "Web-01.prod", "srv-9", "kp-ops")


@pytest.mark.parametrize(
    ("text", "matches"),
    [
        ("", True),
        ("reset", True),
        ("replace", False),
        ("web", True),
        ("WEB-01", True),
        ("prod web", True),  # every word somewhere
        ("prod db", False),
        ("srv-9", True),
        ("kp-ops", True),
        ("t-42", True),
        ("reset kp-", True),
        ("unbind kp-", False),
        ("nothing", False),
    ],
)
def test_matches(text, matches):
    assert parse_command(text).matches(TASK) is matches


def test_unknown_operate_type_matches_no_action_filter():
    odd = RunningTask("t-1", "SOMETHING_ELSE", server_name="web")
    assert parse_command("web").matches(odd)
    assert not parse_command("reset web").matches(odd)


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300))
def test_list_queries_survive_a_round_trip(text):
    query = parse_command(text)
    if query.kind == LIST:
        assert parse_command(query.to_text()) == query
