"""Settings: the only module that reads the environment (and `.env`), validated once at start."""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import NamedTuple

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


PROJECT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
KPS_ENDPOINT = "https://kms.{region}.myhuaweicloud.com"
IAM_ENDPOINT = "https://iam.{region}.myhuaweicloud.com"
LOG_FORMATS = ("text", "json")


class ProjectSetting(NamedTuple):
    """One configured project: its name (`cn-north-4`, `cn-north-4_dev`), region and ID.

    `id` is None when it is to be looked up in IAM by name. A project configured by ID alone
    (`KPS_PROJECT_ID` without a region) is named by its ID and has no region.
    """

    name: str
    region: str | None
    id: str | None

    def endpoint(self, template: str) -> str:
        """The KPS base URL for this project from a template that may contain `{region}`."""
        return template.replace("{region}", self.region or "").rstrip("/")


def region_of(name: str) -> str:
    """A project's region is its name up to the first `_` (`cn-north-4_dev` -> `cn-north-4`)."""
    return name.partition("_")[0]


def missing_half(ak: str | None, sk: str | None) -> str | None:
    """The setting an AK/SK pair lacks when only one half is given ("CLOUD_SDK_SK" or
    "CLOUD_SDK_AK"); None for both or neither."""
    if bool(ak) == bool(sk):
        return None
    return "CLOUD_SDK_SK" if ak else "CLOUD_SDK_AK"


@dataclass(frozen=True, repr=False)
class Settings:
    projects: tuple[ProjectSetting, ...] = ()
    endpoint_template: str = KPS_ENDPOINT
    iam_endpoint_template: str = IAM_ENDPOINT
    ak: str | None = None
    sk: str | None = None
    security_token: str | None = None
    auth_token: str | None = None
    slack_bot_token: str | None = None
    slack_signing_secret: str | None = None
    slack_app_token: str | None = None
    slack_api_url: str = "https://slack.com/api/"
    channel: str | None = None
    admin_users: tuple[str, ...] = ()
    stuck_minutes: int = 60
    db_path: str = "kpsbot.db"
    poll_seconds: int = 30
    pace_seconds: float = 1.0
    page_size: int = 10
    allowed_channels: tuple[str, ...] = ()
    allowed_users: tuple[str, ...] = ()
    burst: int = 5
    outage_polls: int = 3
    retention_days: int = 30
    log_level: str = "INFO"
    log_format: str = "text"
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
        if not self.projects:
            raise SettingsError(
                "no KPS project is configured: set KPS_PROJECTS (e.g. KPS_PROJECTS=cn-north-4,"
                "ap-southeast-1_prod), or KPS_REGION (and KPS_PROJECT_ID)"
            )
        missing = missing_half(self.ak, self.sk)
        if missing:
            raise SettingsError(
                f"{missing} is not set: AK/SK signing needs both CLOUD_SDK_AK and CLOUD_SDK_SK"
            )
        if not self.auth_kind:
            raise SettingsError(
                "no KPS credentials: set CLOUD_SDK_AK and CLOUD_SDK_SK (recommended) or KPS_AUTH_TOKEN"
            )
        if "{region}" in self.endpoint_template:
            for project in self.projects:
                if project.region is None:
                    raise SettingsError(
                        "KPS_REGION is not set: set it to the project's region, e.g. KPS_REGION=cn-north-4 "
                        "(or set KPS_ENDPOINT)"
                    )
        if self.auth_kind == "token":
            for project in self.projects:
                if project.id is None:
                    raise SettingsError(_token_lookup_error(project, self.projects))
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

    def project(self, name: str) -> ProjectSetting | None:
        return next((p for p in self.projects if p.name == name), None)

    # -- the one project of kpsbot 0.1 (until the watcher and the app take several) --------

    @property
    def project_id(self) -> str | None:
        return self.projects[0].id if self.projects else None

    @property
    def region(self) -> str | None:
        return self.projects[0].region if self.projects else None

    @property
    def endpoint(self) -> str | None:
        return self.projects[0].endpoint(self.endpoint_template) if self.projects else None

    @property
    def location(self) -> str:
        """Where the project lives, for humans: the region, or the endpoint's host."""
        if self.region:
            return self.region
        return (self.endpoint or "").split("://")[-1].rstrip("/")


def _token_lookup_error(project: ProjectSetting, projects: tuple[ProjectSetting, ...]) -> str:
    if len(projects) == 1 and project.name == project.region:
        return (
            "KPS_PROJECT_ID is not set: an IAM token (KPS_AUTH_TOKEN) cannot look project IDs up; "
            f"set KPS_PROJECT_ID, or KPS_PROJECTS={project.name}:<project_id>, "
            "or use CLOUD_SDK_AK/CLOUD_SDK_SK"
        )
    return (
        f"KPS_PROJECTS entry {project.name!r} has no project ID, and an IAM token (KPS_AUTH_TOKEN) cannot "
        f"look it up: write it as {project.name}:<project_id>, or use CLOUD_SDK_AK/CLOUD_SDK_SK"
    )


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


def _float(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds, e.g. {name}={default:g}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low:g} and {high:g}, e.g. {name}={default:g}")
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
        from dotenv import dotenv_values  # only when there is a .env: it is not free to import

        values = {k: v for k, v in dotenv_values(path).items() if v is not None}
    values.update(os.environ)
    return values


def _project_entry(entry: str) -> ProjectSetting:
    name, sep, project_id = (part.strip() for part in entry.partition(":"))
    where = f"KPS_PROJECTS entry {entry!r}"
    if not name:
        raise SettingsError(f"{where} has no project name: use <project name> or <project name>:<project_id>")
    if not REGION_RE.match(region_of(name)) or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise SettingsError(
            f"{where} is not a project name: a name starts with its region, e.g. cn-north-4 or "
            "cn-north-4_dev (console > My Credentials > Projects)"
        )
    if sep and not PROJECT_ID_RE.match(project_id):
        raise SettingsError(f"{where} has a malformed project ID: use <project name>:<project_id>")
    return ProjectSetting(name=name, region=region_of(name), id=project_id if sep else None)


def _projects(env: Mapping[str, str], region: str | None) -> tuple[ProjectSetting, ...]:
    raw = _str(env, "KPS_PROJECTS")
    project_id = _str(env, "KPS_PROJECT_ID")
    if project_id and not PROJECT_ID_RE.match(project_id):
        raise SettingsError("KPS_PROJECT_ID is malformed: copy the project ID from console > My Credentials")
    if raw is None:
        # The one-project forms of kpsbot 0.1: KPS_REGION and/or KPS_PROJECT_ID.
        if project_id:
            return (ProjectSetting(name=region or project_id, region=region, id=project_id),)
        if region:
            return (ProjectSetting(name=region, region=region, id=None),)
        return ()
    if project_id:
        raise SettingsError(
            "KPS_PROJECTS and KPS_PROJECT_ID are both set: list every project in KPS_PROJECTS "
            "(<project name>:<project_id>) and unset KPS_PROJECT_ID"
        )
    projects: list[ProjectSetting] = []
    for entry in raw.split(","):
        if not entry.strip():
            continue
        project = _project_entry(entry.strip())
        for other in projects:
            if other.name == project.name:
                raise SettingsError(f"KPS_PROJECTS lists the project {project.name!r} twice: keep one")
            if project.id and other.id == project.id:
                raise SettingsError(
                    f"KPS_PROJECTS entries {other.name!r} and {project.name!r} have the same project ID"
                )
        projects.append(project)
    if not projects:
        raise SettingsError(
            "KPS_PROJECTS is empty: list projects like KPS_PROJECTS=cn-north-4,ap-southeast-1_prod"
        )
    return tuple(projects)


def _endpoint(env: Mapping[str, str], name: str, default: str, projects: tuple[ProjectSetting, ...]) -> str:
    template = _url(env, name)
    if template is None:
        return default
    if "{region}" in template:
        for project in projects:
            if project.region is None:
                raise SettingsError(
                    f"{name} contains {{region}} but the project {project.name!r} has no region: "
                    "set KPS_REGION, or name the project in KPS_PROJECTS"
                )
        return template
    regions = sorted({p.region for p in projects if p.region})
    if len(regions) > 1:
        raise SettingsError(
            f"{name} has no {{region}} but the projects are in several regions ({', '.join(regions)}): "
            f"write it with {{region}}, e.g. {name}=https://kms.{{region}}.example.com"
        )
    return template


def log_format_from(env: Mapping[str, str]) -> str:
    """KPSBOT_LOG_FORMAT alone, so that a reason for stopping is written in it even when another
    setting is malformed."""
    log_format = (_str(env, "KPSBOT_LOG_FORMAT") or "text").lower()
    if log_format not in LOG_FORMATS:
        raise SettingsError(f"KPSBOT_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}")
    return log_format


def settings_from(env: Mapping[str, str]) -> Settings:
    region = _str(env, "KPS_REGION")
    if region and not REGION_RE.match(region):
        raise SettingsError(f"KPS_REGION {region!r} does not look like a region: use e.g. cn-north-4")
    projects = _projects(env, region)
    level = (_str(env, "KPSBOT_LOG_LEVEL") or "INFO").upper()
    if level not in LOG_LEVELS:
        raise SettingsError(f"KPSBOT_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
    log_format = log_format_from(env)
    channel = _str(env, "KPSBOT_CHANNEL")
    if channel and not re.fullmatch(r"[CGD][A-Z0-9]+", channel):
        raise SettingsError(
            "KPSBOT_CHANNEL must be a channel ID like C0123ABCDEF "
            "(right-click the channel > View channel details)"
        )
    api_url = _url(env, "SLACK_API_URL", "https://slack.com/api/") or "https://slack.com/api/"
    iam_default = _url(env, "HUAWEICLOUD_SDK_IAM_ENDPOINT", IAM_ENDPOINT) or IAM_ENDPOINT
    return Settings(
        projects=projects,
        endpoint_template=_endpoint(env, "KPS_ENDPOINT", KPS_ENDPOINT, projects),
        iam_endpoint_template=_endpoint(env, "KPS_IAM_ENDPOINT", iam_default, projects),
        ak=_str(env, "CLOUD_SDK_AK"),
        sk=_str(env, "CLOUD_SDK_SK"),
        security_token=_str(env, "CLOUD_SDK_SECURITY_TOKEN"),
        auth_token=_str(env, "KPS_AUTH_TOKEN"),
        slack_bot_token=_str(env, "SLACK_BOT_TOKEN"),
        slack_signing_secret=_str(env, "SLACK_SIGNING_SECRET"),
        slack_app_token=_str(env, "SLACK_APP_TOKEN"),
        slack_api_url=api_url if api_url.endswith("/") else api_url + "/",
        channel=channel,
        admin_users=_ids(env, "KPSBOT_ADMIN_USERS"),
        stuck_minutes=_int(env, "KPSBOT_STUCK_MINUTES", 60, 0, 100_000),
        db_path=_str(env, "KPSBOT_DB") or "kpsbot.db",
        poll_seconds=_int(env, "KPSBOT_POLL_SECONDS", 30, 1, 86400),
        pace_seconds=_float(env, "KPSBOT_PACE_SECONDS", 1.0, 0.0, 60.0),
        page_size=_int(env, "KPSBOT_PAGE_SIZE", 10, 1, 40),
        allowed_channels=_ids(env, "KPSBOT_ALLOWED_CHANNELS"),
        allowed_users=_ids(env, "KPSBOT_ALLOWED_USERS"),
        burst=_int(env, "KPSBOT_BURST", 5, 1, 1000),
        outage_polls=_int(env, "KPSBOT_OUTAGE_POLLS", 3, 1, 1000),
        retention_days=_int(env, "KPSBOT_RETENTION_DAYS", 30, 1, 3650),
        log_level=level,
        log_format=log_format,
        port=_int(env, "PORT", 3000, 1, 65535),
        port_set=bool(_str(env, "PORT")),
    )


def load_settings(env_file: str | os.PathLike = ".env") -> Settings:
    return settings_from(read_environment(env_file))
