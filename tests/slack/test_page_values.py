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


@pytest.mark.parametrize(
    ("ref", "value"),
    [
        (PageRef(Query(), 0), "v1|p1|0|"),
        (PageRef(Query(), 20), "v1|p1|20|"),
        (PageRef(Query(action="RESET", text="web-"), 10), "v1|p1|10|reset web-"),
        (PageRef(Query(failed=True, text="a|b"), 0), "v1|p1|0|failed a|b"),
    ],
)
def test_encode_and_decode(ref, value):
    assert encode_page_value("p1", ref) == value
    assert decode_page_value(value, "p1") == ref


def test_longest_filter_fits_in_a_button_value():
    ref = PageRef(Query(failed=True, action="REPLACE", text="x" * 200), MAX_OFFSET)
    value = encode_page_value("0" * 32, ref)
    assert len(value) <= BUTTON_VALUE
    assert decode_page_value(value, "0" * 32) == ref


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        (None, "altered"),
        ("", "altered"),
        ("garbage", "altered"),
        ("v0|p1|0|", "altered"),
        ("v2|p1|0|", "altered"),
        ("v1|p1|0", "altered"),
        ("v1|p2|0|", "another KPS project"),
        ("v1||0|", "another KPS project"),
        ("v1|p1|-10|", "cannot exist"),
        ("v1|p1|ten|", "cannot exist"),
        ("v1|p1||", "cannot exist"),
        ("v1|p1|1e3|", "cannot exist"),
        ("v1|p1|１０|", "cannot exist"),  # full-width digits pass str.isdigit()
        (f"v1|p1|{MAX_OFFSET + 1}|", "cannot exist"),
        ("v1|p1|0|help", "altered"),
        ("v1|p1|0|status abc", "altered"),
        ("v1|p1|0|" + "x" * 1000, "altered"),
    ],
)
def test_bad_values_are_refused_with_a_reason(value, complaint):
    with pytest.raises(BadPageValue, match=complaint):
        decode_page_value(value, "p1")


@pytest.mark.parametrize(
    ("total", "page_size", "expected"),
    [(0, 10, 0), (1, 10, 0), (10, 10, 0), (11, 10, 10), (25, 10, 20), (1000, 10, 990)],
)
def test_last_offset(total, page_size, expected):
    assert last_offset(total, page_size) == expected
