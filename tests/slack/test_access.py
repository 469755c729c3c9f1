"""Allow-lists for /kps-tasks."""

import pytest

from kpsbot.slack.access import AccessPolicy


@pytest.mark.parametrize(
    ("channels", "users", "user", "channel", "allowed"),
    [
        ((), (), "U1", "C1", True),
        ((), (), None, None, True),
        (("C1",), (), "U1", "C1", True),
        (("C1",), (), "U1", "C2", False),
        (("C1",), (), "U1", None, False),
        ((), ("U1",), "U1", "C9", True),
        ((), ("U1",), "U2", "C1", False),
        (("C1",), ("U1",), "U1", "C1", True),
        (("C1",), ("U1",), "U1", "C2", False),
        (("C1",), ("U1",), "U2", "C1", False),
    ],
)
def test_allows(channels, users, user, channel, allowed):
    assert AccessPolicy(channels, users).allows(user, channel) is allowed
