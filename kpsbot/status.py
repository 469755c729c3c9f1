"""What kpsbot reports about itself, read from the store: `/healthz` and the Home tab's view model."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone

from kpsbot.kps.models import RunningTask, parse_operate_type, utc
from kpsbot.projects import ProjectDirectory
from kpsbot.settings import ProjectSetting
from kpsbot.slack.home import FinishedTask, HomeStatus, ProjectStatus, SubscriptionLine
from kpsbot.slack.subscriptions import describe_subscription
from kpsbot.slack.text import action_label
from kpsbot.store import Store


def health_report(
    *,
    version: str,
    mode: str,
    leader: bool,
    configured: Sequence[ProjectSetting],
    directory: ProjectDirectory,
    store: Store,
) -> dict:
    """`/healthz`: each project's last successful poll (or why it is not resolved), the lease, the
    outbox and the channels that fail for good. Never a secret."""
    last = store.last_successful_polls()
    resolved = {p.name: p for p in directory.projects()}
    unresolved = directory.unresolved()
    projects = {}
    for setting in configured:
        project = resolved.get(setting.name)
        when = last.get(project.id) if project else None
        entry: dict = {
            "region": setting.region,
            "id": project.id if project else None,
            "resolved": project is not None,
            "last_successful_poll": when.isoformat() if when else None,
        }
        if project is None:
            entry["error"] = unresolved.get(setting.name)
        projects[setting.name] = entry
    polled = [last[p.id] for p in resolved.values() if p.id in last]
    newest = max(polled, default=None)
    return {
        "status": "ok",
        "version": version,
        "mode": mode,
        "watcher": "leader" if leader else "standby",
        "last_successful_poll": newest.isoformat() if newest else None,
        "projects": projects,
        "pending_notifications": store.pending_deliveries(),
        "failed_notifications": store.failed_deliveries(),
        "last_delivery_error": store.last_delivery_error(),
        "failing_channels": store.failing_channels(),
    }


def home_status(
    *,
    version: str,
    watcher: str,
    stuck_minutes: int,
    configured: Sequence[ProjectSetting],
    directory: ProjectDirectory,
    store: Store,
    fixed_channel: str | None,
    now: float | None = None,
) -> HomeStatus:
    """The Home tab's view model: projects, the last finished tasks, subscriptions."""
    now = time.time() if now is None else now
    last = store.last_successful_polls()
    states = store.project_states()
    resolved = {p.name: p for p in directory.projects()}
    names = {p.id: p.name for p in resolved.values()}
    cutoff = int((now - stuck_minutes * 60) * 1000) if stuck_minutes else None
    projects = []
    for setting in configured:
        project = resolved.get(setting.name)
        if project is None:
            projects.append(ProjectStatus(setting.name, setting.region, False, None, {}, 0, None, None))
            continue
        by_type, stuck = store.running_summary(project.id, stuck_before_ms=cutoff)
        running: Counter[str] = Counter()
        for operate_type, count in by_type.items():
            running[action_label(parse_operate_type(operate_type)[1], operate_type)] += count
        state = states.get(project.id)
        outage = state is not None and state.failures > 0
        projects.append(
            ProjectStatus(
                name=setting.name,
                region=setting.region,
                resolved=True,
                last_success=last.get(project.id),
                running=dict(running),
                stuck=stuck,
                outage_since=utc(state.failing_since) if outage and state else None,
                outage_error=state.last_error if outage and state else None,
            )
        )
    finished = []
    for event in store.recent_finished(10):
        task = RunningTask(event["task_id"], event["operate_type"] or "", event["task_time"] or "")
        finished.append(
            FinishedTask(
                project=names.get(event["project"], event["project"] or "?"),
                action=task.action,
                operate_type=task.operate_type,
                server_name=event["server_name"] or "",
                server_id="",
                task_id=task.task_id,
                outcome=event["outcome"] or "unknown",
                duration_s=event["duration_s"],
                finished_at=utc(event["at"]) or datetime.now(timezone.utc),
                error_code=event["error_code"] or "",
                error_msg=event["error_msg"] or "",
            )
        )
    failing = store.failing_channels()
    lines = []
    if fixed_channel:
        lines.append(
            SubscriptionLine(fixed_channel, None, "everything (KPSBOT_CHANNEL)", failing.get(fixed_channel))
        )
    lines += [
        SubscriptionLine(s.channel, s.id, describe_subscription(s), failing.get(s.channel))
        for s in store.subscriptions()
    ]
    return HomeStatus(
        version=version,
        watcher=watcher,
        stuck_minutes=stuck_minutes,
        projects=projects,
        finished=finished,
        subscriptions=lines,
    )
