"""IAM's project look-up: a project's ID from its name, as the official SDK finds it when none is given."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from kpsbot.kps.client import ApiClient, KpsError


class ProjectNotFound(Exception):
    """IAM knows no project of that name, or more than one: a setting to fix, not an outage."""

    def __init__(self, name: str, found: int) -> None:
        self.name = name
        self.found = found
        if found:
            detail = f"IAM knows {found} projects named {name!r}: write it as {name}:<project_id>"
        else:
            detail = (
                f"IAM knows no project named {name!r}: check the name (console > My Credentials > "
                "Projects), or write it as <project name>:<project_id>"
            )
        super().__init__(f"KPS_PROJECTS: {detail}")


class IamClient(ApiClient):
    """`GET /v3/projects?name=…` on IAM's endpoint, signed like KPS calls (no X-Project-Id)."""

    service = "IAM"

    def project_id(self, name: str) -> str:
        """The ID of the project called `name`; ProjectNotFound or KpsError otherwise."""
        body: Any = self._get("/v3/projects", {"name": name})
        projects = body.get("projects") if isinstance(body, dict) else None
        if not isinstance(projects, list):
            raise KpsError(f"IAM returned projects of the wrong shape for {quote(name)!r}")
        ids = [
            p["id"]
            for p in projects
            if isinstance(p, dict) and p.get("name") == name and isinstance(p.get("id"), str) and p["id"]
        ]
        if len(ids) != 1:
            raise ProjectNotFound(name, len(ids))
        return ids[0]
