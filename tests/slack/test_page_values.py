"""Button values: encoding, and every way a value can be wrong."""

import pytest

from kpsbot.slack.paging import (
    MAX_OFFSET,
    BadPageValue,
    PageRef,
    decode_page_value,
    encode_page_value,
    last_offset,
)
from kpsbot.slack.query import Query
from kpsbot.slack.text import BUTTON_VALUE

PROJECTS = ["cn-north-4", "ap-southeast-1_prod"]


@pytest.mark.parametrize(
    ("ref", "value"),
    [
        (PageRef(Query(), 0), "v2||0|"),
        (PageRef(Query(), 20), "v2||20|"),
        (PageRef(Query(action="RESET", text="web-"), 10), "v2||10|reset web-"),
        (PageRef(Query(failed=True, text="a|b"), 0), "v2||0|failed a|b"),
        (PageRef(Query(project="cn-north-4", action="UNBIND"), 10), "v2|cn-north-4|10|unbind"),
        # A second project word is free text: it stays text after a round trip.
        (
            PageRef(Query(project="cn-north-4", text="ap-southeast-1_prod"), 0),
            "v2|cn-north-4|0|ap-southeast-1_prod",
        ),
    ],
)
def test_encode_and_decode(ref, value):
    assert encode_page_value(ref) == value
    assert decode_page_value(value, PROJECTS) == ref


def test_longest_filter_fits_in_a_button_value():
    ref = PageRef(Query(failed=True, action="REPLACE", text="x" * 200, project="p" * 64), MAX_OFFSET)
    value = encode_page_value(ref)
    assert len(value) <= BUTTON_VALUE
    assert decode_page_value(value, ["p" * 64]) == ref


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        (None, "altered"),
        ("", "altered"),
        ("garbage", "altered"),
        ("v0||0|", "altered"),
        ("v1|p1|0|", "altered"),  # a button of kpsbot 0.1
        ("v2||0", "altered"),
        ("v2|eu-west-0|0|", "no longer watches"),
        ("v2||-10|", "cannot exist"),
        ("v2||ten|", "cannot exist"),
        ("v2|||", "cannot exist"),
        ("v2||1e3|", "cannot exist"),
        ("v2||１０|", "cannot exist"),  # full-width digits pass str.isdigit()
        (f"v2||{MAX_OFFSET + 1}|", "cannot exist"),
        ("v2||0|help", "altered"),
        ("v2||0|status abc", "altered"),
        ("v2||0|subscribe", "altered"),
        ("v2||0|" + "x" * 1000, "altered"),
    ],
)
def test_bad_values_are_refused_with_a_reason(value, complaint):
    with pytest.raises(BadPageValue, match=complaint):
        decode_page_value(value, PROJECTS)


@pytest.mark.parametrize(
    ("total", "page_size", "expected"),
    [(0, 10, 0), (1, 10, 0), (10, 10, 0), (11, 10, 10), (25, 10, 20), (1000, 10, 990)],
)
def test_last_offset(total, page_size, expected):
    assert last_offset(total, page_size) == expected
