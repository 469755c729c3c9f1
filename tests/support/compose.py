"""The Slack app as `kpsbot run` composes it from settings: clients, project IDs, catalog, app."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kpsbot.cli import Cloud, ProjectCatalog, build_slack_app
from kpsbot.settings import Settings
from kpsbot.store import Store


def compose_app(
    settings: Settings,
    store: Store,
    work: Any,
    *,
    home: Callable[[], Any] | None = None,
    kps_timeout: float = 6.0,
):
    """The Bolt app over every configured project (IDs from the settings or IAM), KPS retries off."""
    cloud = Cloud(settings, timeout=(1, kps_timeout), retries=0)
    directory = cloud.directory(store)
    directory.resolve(strict=True)
    return build_slack_app(settings, ProjectCatalog(settings, directory, cloud), store, work, home=home)
