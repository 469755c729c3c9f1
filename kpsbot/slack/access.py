"""Who may use `/kps-tasks` and its buttons: the channel and user allow-lists (pure)."""

from __future__ import annotations

from dataclasses import dataclass

REFUSAL = (
    ":no_entry: `/kps-tasks` is limited to certain channels and people here. "
    "Ask whoever runs kpsbot to add you or this channel."
)


@dataclass(frozen=True)
class AccessPolicy:
    """Empty lists allow everyone; when both are set, the user and the channel must both be listed."""

    channels: tuple[str, ...] = ()
    users: tuple[str, ...] = ()

    def allows(self, user_id: str | None, channel_id: str | None) -> bool:
        if self.channels and channel_id not in self.channels:
            return False
        if self.users and user_id not in self.users:
            return False
        return True
