"""Remembering which interactions were already answered."""

from kpsbot.slack.retries import RecentKeys, request_key


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_key_is_new_once_until_it_expires():
    clock = Clock()
    seen = RecentKeys(ttl=60, clock=clock)
    assert seen.add("a") is True
    assert seen.add("a") is False
    clock.now = 59
    assert seen.add("a") is False
    clock.now = 121
    assert seen.add("a") is True


def test_oldest_keys_are_dropped_at_capacity():
    seen = RecentKeys(ttl=600, max_size=2, clock=Clock())
    for key in "abc":
        assert seen.add(key)
    assert seen.add("a") is True  # forgotten to make room
    assert seen.add("c") is False


def test_request_key():
    assert request_key({"trigger_id": "t1"}) == "t1"
    assert request_key({"trigger_id": ""}) is None
    assert request_key({}) is None
    assert request_key("not a body") is None
