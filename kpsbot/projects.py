"""The configured projects with their IDs: given in the settings, kept in the database, or looked up
in IAM by name (as the official SDK does when no project ID is given)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from kpsbot.kps.client import KpsError
from kpsbot.kps.iam import IamClient, ProjectNotFound
from kpsbot.logs import log_context
from kpsbot.settings import ProjectSetting
from kpsbot.store import Store

log = logging.getLogger(__name__)

SETTING, IAM, DATABASE = "setting", "iam", "database"
# How soon `kpsbot run` asks IAM again for a project it could not resolve: after the first failure
# quickly (IAM unreachable for a moment while the bot starts must not leave a project unwatched for
# a minute), then twice as long after each failure in a row, up to RETRY_SECONDS.
FIRST_RETRY_SECONDS = 1.0
RETRY_SECONDS = 60.0


class Project(NamedTuple):
    """A configured project whose ID is known."""

    name: str
    region: str | None
    id: str
    source: str  # setting | iam | database

    @property
    def location(self) -> str:
        return self.region or ""


class ProjectDirectory:
    """Resolves configured projects to IDs once, and again later for those IAM could not answer.

    IDs from IAM are kept in the store, so a restart does not depend on IAM; an ID kept there is
    used only for the same name and region.
    """

    def __init__(
        self,
        configured: Sequence[ProjectSetting],
        *,
        store: Store | None,
        iam: Callable[[str], IamClient] | None,
        clock: Callable[[], float] = time.monotonic,
        retry_seconds: float = RETRY_SECONDS,
        first_retry_seconds: float = FIRST_RETRY_SECONDS,
    ) -> None:
        self.configured = tuple(configured)
        self.store = store
        self.iam = iam
        self._clock = clock
        self.retry_seconds = retry_seconds
        self.first_retry_seconds = first_retry_seconds
        self._resolved: dict[str, Project] = {}
        self._errors: dict[str, str] = {}
        self._next_try = 0.0
        self._failed_tries = 0  # refreshes in a row that left a project unresolved
        self._lock = threading.Lock()

    @property
    def several(self) -> bool:
        return len(self.configured) > 1

    def resolve(self, *, strict: bool = False) -> list[Project]:
        """Find the IDs still unknown. With `strict` (one-shot commands) an unreachable IAM raises
        KpsError; otherwise the project stays unresolved and is tried again after a while. A name
        IAM does not know, or knows twice, raises ProjectNotFound either way, once every other
        project has been resolved (it must not keep them from being watched)."""
        with self._lock:
            known = self.store.known_projects() if self.store is not None else {}
            not_found: ProjectNotFound | None = None
            for setting in self.configured:
                if setting.name in self._resolved:
                    continue
                if setting.id is not None:
                    self._resolved[setting.name] = Project(setting.name, setting.region, setting.id, SETTING)
                    continue
                kept = known.get(setting.name)
                if kept is not None and kept.region == setting.region and kept.source == IAM:
                    self._resolved[setting.name] = Project(setting.name, setting.region, kept.id, DATABASE)
                    continue
                try:
                    self._look_up(setting, strict)
                except ProjectNotFound as exc:
                    self._errors[setting.name] = str(exc)
                    not_found = not_found or exc
            if not_found is not None:
                raise not_found
            return self.projects()

    def _look_up(self, setting: ProjectSetting, strict: bool) -> None:
        if self.iam is None or setting.region is None:
            self._errors[setting.name] = "no project ID, and no way to look it up"
            return
        try:
            project_id = self.iam(setting.region).project_id(setting.name)
        except ProjectNotFound:
            raise
        except KpsError as exc:
            self._errors[setting.name] = str(exc)
            if strict:
                raise
            log.warning(
                "cannot look up the ID of project %s in IAM (retrying later): %s",
                setting.name,
                exc,
                extra=log_context(project=setting.name),
            )
            return
        self._errors.pop(setting.name, None)
        self._resolved[setting.name] = Project(setting.name, setting.region, project_id, IAM)
        context = log_context(project=setting.name)
        log.info("project %s has ID %s (from IAM)", setting.name, project_id, extra=context)
        if self.store is not None:
            self.store.remember_project(setting.name, setting.region, project_id, IAM)

    def refresh(self) -> list[Project]:
        """In a long-running process: retry unresolved projects, `first_retry_seconds` after the
        first failure and twice as long after each one after it, at most every `retry_seconds`. A
        name IAM says it does not know is logged and stays unresolved."""
        if len(self._resolved) == len(self.configured) or self._clock() < self._next_try:
            return self.projects()
        wait = min(self.retry_seconds, self.first_retry_seconds * 2.0 ** min(self._failed_tries, 30))
        self._next_try = self._clock() + wait
        try:
            return self.resolve()
        except ProjectNotFound as exc:
            log.error("%s", exc)
            return self.projects()
        finally:
            self._failed_tries = self._failed_tries + 1 if self.unresolved() else 0

    def projects(self) -> list[Project]:
        """The resolved projects, in the order they are configured."""
        return [self._resolved[s.name] for s in self.configured if s.name in self._resolved]

    def unresolved(self) -> dict[str, str]:
        """Configured project names without an ID yet, with why."""
        return {
            s.name: self._errors.get(s.name, "not looked up yet")
            for s in self.configured
            if s.name not in self._resolved
        }

    def by_name(self, name: str) -> Project | None:
        return self._resolved.get(name)
