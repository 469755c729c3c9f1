"""Settings: the only module that reads the environment (and `.env`), validated once at start."""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from dotenv import dotenv_values

log = logging.getLogger(__name__)

SECRETS = (
    "ak",
    "sk",
    "security_token",
    "auth_token",
    "slack_bot_token",
    "slack_signing_secret",
    "slack_app_token",
)
REGION_RE = re.compile(r"^[a-z]{2,}(-[a-z0-9]+)+$")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class SettingsError(Exception):
    """A missing or malformed setting; the message names it and says how to fix it."""


@dataclass(frozen=True, repr=False)
class Settings:
    project_id: str | None = None
    region: str | None = None
    endpoint: str | None = None
    ak: str | None = None
    sk: str | None = None
    security_token: str | None = None
    auth_token: str | None = None
    slack_bot_token: str | None = None
    slack_signing_secret: str | None = None
    slack_app_token: str | None = None
    slack_api_url: str = "https://slack.com/api/"
    channel: str | None = None
    db_path: str = "kpsbot.db"
    poll_seconds: int = 30
    page_size: int = 10
    allowed_channels: tuple[str, ...] = ()
    allowed_users: tuple[str, ...] = ()
    burst: int = 5
    outage_polls: int = 3
    retention_days: int = 30
    log_level: str = "INFO"
    port: int = 3000
    port_set: bool = False

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in SECRETS and value:
                value = "***"
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    __str__ = __repr__

    # -- what each command needs -------------------------------------------------

    @property
    def auth_kind(self) -> str | None:
        if self.ak and self.sk:
            return "aksk"
        if self.auth_token:
            return "token"
        return None

    def require_kps(self) -> Settings:
        if not self.project_id:
            raise SettingsError(
                "KPS_PROJECT_ID is not set: set it to the ID of the Huawei Cloud project to watch "
                "(console > My Credentials > Projects)"
            )
        if not self.endpoint:
            raise SettingsError("KPS_REGION is not set: set it to your region, e.g. KPS_REGION=cn-north-4")
        if bool(self.ak) != bool(self.sk) and not self.auth_token:
            missing = "CLOUD_SDK_SK" if self.ak else "CLOUD_SDK_AK"
            raise SettingsError(
                f"{missing} is not set: AK/SK signing needs both CLOUD_SDK_AK and CLOUD_SDK_SK"
            )
        if not self.auth_kind:
            raise SettingsError(
                "no KPS credentials: set CLOUD_SDK_AK and CLOUD_SDK_SK (recommended) or KPS_AUTH_TOKEN"
            )
        return self

    def require_slack(self) -> Settings:
        if not self.slack_bot_token:
            raise SettingsError(
                "SLACK_BOT_TOKEN is not set: copy the xoxb-… token from the Slack app's "
                "OAuth & Permissions page"
            )
        if not self.slack_app_token and not self.slack_signing_secret:
            raise SettingsError(
                "SLACK_SIGNING_SECRET is not set: copy it from the Slack app's Basic "
                "Information page (or set SLACK_APP_TOKEN for Socket Mode)"
            )
        return self

    def require_channel(self) -> Settings:
        """Notifications need a bot token to post with."""
        if self.channel and not self.slack_bot_token:
            raise SettingsError(
                "KPSBOT_CHANNEL is set but SLACK_BOT_TOKEN is not: set the bot token, or unset the channel "
                "to print notifications here"
            )
        return self

    @property
    def slack_configured(self) -> bool:
        return bool(self.slack_bot_token and (self.slack_app_token or self.slack_signing_secret))

    @property
    def socket_mode(self) -> bool:
        return bool(self.slack_app_token)

    # -- objects built from settings ---------------------------------------------

    def kps_auth(self):
        from kpsbot.kps.auth import AkSkAuth, TokenAuth

        self.require_kps()
        if self.auth_kind == "aksk":
            return AkSkAuth(self.ak, self.sk, self.project_id, self.security_token)
        return TokenAuth(self.auth_token, self.project_id)

    def kps_client(self, **options):
        from kpsbot.kps.client import KpsClient

        return KpsClient(self.endpoint, self.project_id, self.kps_auth(), **options)

    @property
    def location(self) -> str:
        """Where the project lives, for humans: the region, or the endpoint's host."""
        if self.region:
            return self.region
        return (self.endpoint or "").split("://")[-1].rstrip("/")


# -- parsing -------------------------------------------------------------------


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, e.g. {name}={default}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high}, e.g. {name}={default}")
    return value


def _ids(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    raw = env.get(name) or ""
    ids = tuple(part.strip() for part in raw.split(",") if part.strip())
    for value in ids:
        if not re.fullmatch(r"[A-Z0-9]+", value):
            raise SettingsError(f"{name} must be comma-separated Slack IDs like C0123ABC,U0456DEF")
    return ids


def _str(env: Mapping[str, str], name: str) -> str | None:
    value = (env.get(name) or "").strip()
    return value or None


def _url(env: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    value = _str(env, name)
    if value is None:
        return default
    if not re.match(r"^https?://[^/\s]+", value):
        raise SettingsError(f"{name} must be a URL starting with http:// or https://")
    return value


def read_environment(env_file: str | os.PathLike = ".env") -> dict[str, str]:
    """`.env` values overlaid with the real environment (real variables win)."""
    path = Path(env_file)
    values: dict[str, str] = {}
    if path.is_file():
        mode = path.stat().st_mode
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            log.warning("%s is readable by other users; run: chmod 600 %s", path, path)
        values = {k: v for k, v in dotenv_values(path).items() if v is not None}
    values.update(os.environ)
    return values


def settings_from(env: Mapping[str, str]) -> Settings:
    region = _str(env, "KPS_REGION")
    if region and not REGION_RE.match(region):
        raise SettingsError(f"KPS_REGION {region!r} does not look like a region: use e.g. cn-north-4")
    endpoint = _url(env, "KPS_ENDPOINT")
    if endpoint is None and region:
        endpoint = f"https://kms.{region}.myhuaweicloud.com"
    level = (_str(env, "KPSBOT_LOG_LEVEL") or "INFO").upper()
    if level not in LOG_LEVELS:
        raise SettingsError(f"KPSBOT_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
    channel = _str(env, "KPSBOT_CHANNEL")
    if channel and not re.fullmatch(r"[CGD][A-Z0-9]+", channel):
        raise SettingsError(
            "KPSBOT_CHANNEL must be a channel ID like C0123ABCDEF "
            "(right-click the channel > View channel details)"
        )
    api_url = _url(env, "SLACK_API_URL", "https://slack.com/api/")
    return Settings(
        project_id=_str(env, "KPS_PROJECT_ID"),
        region=region,
        endpoint=endpoint.rstrip("/") if endpoint else None,
        ak=_str(env, "CLOUD_SDK_AK"),
        sk=_str(env, "CLOUD_SDK_SK"),
        security_token=_str(env, "CLOUD_SDK_SECURITY_TOKEN"),
        auth_token=_str(env, "KPS_AUTH_TOKEN"),
        slack_bot_token=_str(env, "SLACK_BOT_TOKEN"),
        slack_signing_secret=_str(env, "SLACK_SIGNING_SECRET"),
        slack_app_token=_str(env, "SLACK_APP_TOKEN"),
        slack_api_url=api_url if api_url.endswith("/") else api_url + "/",
        channel=channel,
        db_path=_str(env, "KPSBOT_DB") or "kpsbot.db",
        poll_seconds=_int(env, "KPSBOT_POLL_SECONDS", 30, 1, 86400),
        page_size=_int(env, "KPSBOT_PAGE_SIZE", 10, 1, 40),
        allowed_channels=_ids(env, "KPSBOT_ALLOWED_CHANNELS"),
        allowed_users=_ids(env, "KPSBOT_ALLOWED_USERS"),
        burst=_int(env, "KPSBOT_BURST", 5, 1, 1000),
        outage_polls=_int(env, "KPSBOT_OUTAGE_POLLS", 3, 1, 1000),
        retention_days=_int(env, "KPSBOT_RETENTION_DAYS", 30, 1, 3650),
        log_level=level,
        port=_int(env, "PORT", 3000, 1, 65535),
        port_set=bool(_str(env, "PORT")),
    )


def load_settings(env_file: str | os.PathLike = ".env") -> Settings:
    return settings_from(read_environment(env_file))
