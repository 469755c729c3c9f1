"""The App Home tab: a status view of every project, recent finishes and subscriptions, published on
`app_home_opened`."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from slack_bolt import App
from slack_sdk.errors import SlackApiError

from kpsbot.slack.kit import context, header, section
from kpsbot.slack.notifications import OUTCOME_EMOJI, OUTCOME_WORD
from kpsbot.slack.server import slack_reason
from kpsbot.slack.text import (
    ACTION_LABELS,
    action_emoji,
    action_label,
    code,
    date_token,
    duration,
    inline,
)

log = logging.getLogger(__name__)

CALLBACK_ID = "kpsbot_home"
WATCHER_WORDS = {
    "leader": ":satellite_antenna: this process runs the watcher",
    "standby": ":zzz: watcher on standby (another process polls KPS)",
    "off": "watcher off in this process",
}
LABEL_ACTIONS = {label: action for action, label in ACTION_LABELS.items()}
CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{2,20}$")  # only IDs like this become a <#…> mention

# -- the 100-block budget ---------------------------------------------------------------
#
# Fixed:         header, context (2) + divider and header for each of the three parts (6)
# Projects:      an overview context, one section per project up to PROJECT_SECTIONS, "…and N more"
# Finished:      FINISHED_SHOWN lines in one section
# Subscriptions: LINES_PER_SECTION lines a section up to SUBSCRIPTION_LINES, "…and N more", a hint
#
# Lines that share a section are built from pieces of bounded length, so LINES_PER_SECTION of
# them always fit in Slack's 3000 characters and a section is never cut mid-line.
MAX_VIEW_BLOCKS = 100
PROJECT_SECTIONS = 50
FINISHED_SHOWN = 10
LINES_PER_SECTION = 10
SUBSCRIPTION_LINES = 40
WORST_CASE_BLOCKS = (
    2
    + 6
    + (1 + PROJECT_SECTIONS + 1)
    + -(-FINISHED_SHOWN // LINES_PER_SECTION)
    + (-(-SUBSCRIPTION_LINES // LINES_PER_SECTION) + 1 + 1)
)
LINE = 290  # longest line that shares a section (10 × 290 + newlines < 3000)

NAME = 100  # a project name as a section's title
SHORT = 40  # a project, server or action name inside a shared line
REGION = 50
LABEL = 30
ERROR = 500
ERROR_CODE = 30
DESCRIPTION = 140
KINDS_SHOWN = 6  # distinct running-task actions named per project; the rest are summed


@dataclass(frozen=True)
class ProjectStatus:
    name: str  # project name, e.g. "cn-north-4_prod"
    region: str | None
    resolved: bool  # False: project ID not yet looked up in IAM
    last_success: datetime | None  # last successful poll (aware UTC)
    running: Mapping[str, int]  # running tasks by action label ("Reset", …, or a raw operate_type)
    stuck: int  # running longer than the stuck threshold
    outage_since: datetime | None  # set while polls fail in a row (announced or not)
    outage_error: str | None  # the last poll error, for humans


@dataclass(frozen=True)
class FinishedTask:
    project: str
    action: str | None  # RESET | REPLACE | UNBIND | None (unknown operate_type)
    operate_type: str
    server_name: str
    server_id: str
    task_id: str
    outcome: str  # succeeded | failed | unknown
    duration_s: float | None
    finished_at: datetime
    error_code: str = ""
    error_msg: str = ""


@dataclass(frozen=True)
class SubscriptionLine:
    channel: str  # channel ID, shown as <#C123>
    number: int | None  # as /kps-tasks subscriptions numbers it; None for the fixed KPSBOT_CHANNEL one
    description: str  # already-rendered human text (unescaped: escaped here)
    failing: str | None = None  # Slack error when the channel fails for good, e.g. "not_in_channel"


@dataclass(frozen=True)
class HomeStatus:
    version: str
    watcher: str  # "leader" | "standby" | "off"
    stuck_minutes: int  # 0 = stuck alerts off
    projects: Sequence[ProjectStatus]
    finished: Sequence[FinishedTask]  # newest first; at most FINISHED_SHOWN are shown
    subscriptions: Sequence[SubscriptionLine]


# -- rendering (pure) --------------------------------------------------------------------


def _divider() -> dict:
    return {"type": "divider"}


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def _ago(when: datetime, now: datetime) -> str:
    return f"{date_token(when)} ({duration(now - when)} ago)"


def _running_total(project: ProjectStatus) -> int:
    return sum(n for n in project.running.values() if n > 0)


def _running_text(running: Mapping[str, int]) -> str:
    """`:arrows_counterclockwise: 3 Reset · :key: 1 Replace`, known actions first, then the rest."""
    order = {label: i for i, label in enumerate(ACTION_LABELS.values())}
    counts = sorted(
        ((label, n) for label, n in running.items() if n > 0),
        key=lambda item: (order.get(item[0], len(order)), -item[1], item[0]),
    )
    parts = [
        f"{action_emoji(LABEL_ACTIONS.get(label))} {n:,} {inline(label, LABEL)}"
        for label, n in counts[:KINDS_SHOWN]
    ]
    if rest := sum(n for _, n in counts[KINDS_SHOWN:]):
        parts.append(f"{rest:,} of other kinds")
    return " · ".join(parts)


def _project_section(project: ProjectStatus, now: datetime, stuck_minutes: int) -> dict:
    title = f"*{inline(project.name, NAME) or 'unnamed project'}*"
    if project.region:
        title += f" · {inline(project.region, REGION)}"
    lines = [title]
    if not project.resolved:
        lines.append(":grey_question: *Not yet resolved*: its project ID has not been looked up in IAM yet")
    if project.last_success is not None:
        lines.append(f"Last good poll {_ago(project.last_success, now)}")
    else:
        lines.append("No successful poll yet")
    running = _running_text(project.running) or "No tasks running"
    if project.stuck > 0:
        over = f" (running over {stuck_minutes} min)" if stuck_minutes > 0 else ""
        running += f" · :hourglass: *{project.stuck:,} stuck*{over}"
    lines.append(running)
    if project.outage_since is not None:
        lines.append(f":rotating_light: *KPS polls failing* since {_ago(project.outage_since, now)}")
    if project.outage_error:
        lines.append(f"Last error: {inline(project.outage_error, ERROR)}")
    return section("\n".join(lines))


def _troubled(project: ProjectStatus) -> bool:
    return project.outage_since is not None or project.stuck > 0 or not project.resolved


def _tally(projects: Sequence[ProjectStatus]) -> list[str]:
    """Context parts summing up `projects`: tasks running, stuck, failing polls, unresolved IDs."""
    stuck = sum(max(p.stuck, 0) for p in projects)
    failing = sum(p.outage_since is not None for p in projects)
    unresolved = sum(not p.resolved for p in projects)
    return [
        f"{sum(_running_total(p) for p in projects):,} running",
        f":hourglass: {stuck:,} stuck" if stuck else "",
        f":rotating_light: {failing:,} failing" if failing else "",
        f"{unresolved:,} not yet resolved" if unresolved else "",
    ]


def _project_blocks(projects: Sequence[ProjectStatus], now: datetime, stuck_minutes: int) -> list[dict]:
    if not projects:
        return [section("No KPS projects configured: set `KPS_PROJECTS` (or `KPS_REGION`).")]
    # When not every project fits, the troubled ones are kept; the rest stay in configured order.
    ranked = sorted(range(len(projects)), key=lambda i: (not _troubled(projects[i]), i))
    kept = sorted(ranked[:PROJECT_SECTIONS])
    hidden = [projects[i] for i in ranked[PROJECT_SECTIONS:]]
    blocks = [
        context(_plural(len(projects), "project"), *_tally(projects)),
        *(_project_section(projects[i], now, stuck_minutes) for i in kept),
    ]
    if hidden:
        blocks.append(context(f"…and {_plural(len(hidden), 'more project')}", *_tally(hidden)))
    return blocks


def _finished_line(task: FinishedTask, several_projects: bool) -> str:
    """One finished task in at most LINE characters: every piece has a bounded length."""
    emoji = OUTCOME_EMOJI.get(task.outcome, ":grey_question:")
    word = OUTCOME_WORD.get(task.outcome, "finished (outcome unknown)")
    label = inline(action_label(task.action, task.operate_type), LABEL)
    server = inline(task.server_name, SHORT) or inline(task.server_id, SHORT) or "an unnamed server"
    line = f"{emoji} *{label}* {word} on *{server}*"
    if task.duration_s is not None and math.isfinite(task.duration_s):
        line += f" after {duration(task.duration_s)}"
    if several_projects:
        line += f" · {inline(task.project, SHORT)}"
    if task.error_code:
        line += f" · {code(task.error_code, ERROR_CODE)}"
    elif task.outcome == "failed" and task.error_msg:
        line += f" · {inline(task.error_msg, ERROR_CODE)}"
    return f"{line} · {date_token(task.finished_at, '%Y-%m-%d %H:%M')}"


def _in_sections(lines: Sequence[str]) -> list[dict]:
    return [
        section("\n".join(lines[i : i + LINES_PER_SECTION])) for i in range(0, len(lines), LINES_PER_SECTION)
    ]


def _finished_blocks(finished: Sequence[FinishedTask], several_projects: bool) -> list[dict]:
    if not finished:
        return [section("No finished tasks yet.")]
    return _in_sections([_finished_line(t, several_projects) for t in finished[:FINISHED_SHOWN]])


def _channel(channel: str) -> str:
    """A `<#C…>` mention for a real channel ID; anything else is shown as escaped code."""
    return f"<#{channel}>" if CHANNEL_ID.match(channel or "") else code(channel, SHORT)


def _subscription_line(sub: SubscriptionLine) -> str:
    number = f"no. {sub.number}" if sub.number is not None else "`KPSBOT_CHANNEL`"
    line = f"{_channel(sub.channel)} · {number} · {inline(sub.description, DESCRIPTION) or 'everything'}"
    if sub.failing:
        line += f" · :warning: cannot post: {code(sub.failing, ERROR_CODE)} (`/invite @kpsbot` there)"
    return line


def _subscription_blocks(subscriptions: Sequence[SubscriptionLine]) -> list[dict]:
    if not subscriptions:
        return [
            section(
                "No subscriptions: `/kps-tasks subscribe` in a channel posts task starts and finishes there."
            )
        ]
    # Channels that fail for good come first, so the cut never hides them.
    ordered = sorted(subscriptions, key=lambda s: not s.failing)
    shown, hidden = ordered[:SUBSCRIPTION_LINES], ordered[SUBSCRIPTION_LINES:]
    blocks = _in_sections([_subscription_line(s) for s in shown])
    if hidden:
        failing = sum(bool(s.failing) for s in hidden)
        blocks.append(
            context(
                f"…and {_plural(len(hidden), 'more subscription')}",
                f":warning: {failing:,} of them failing" if failing else "",
            )
        )
    failing_channels = {s.channel for s in subscriptions if s.failing}
    if failing_channels:
        blocks.append(
            context(
                f":warning: kpsbot cannot post in {_plural(len(failing_channels), 'channel')} until it is "
                "invited: `/invite @kpsbot` in each."
            )
        )
    return blocks


def render_home(status: HomeStatus, now: datetime) -> dict:
    """The `home` view for `views.publish`: at most MAX_VIEW_BLOCKS blocks whatever the status holds."""
    watcher = WATCHER_WORDS.get(status.watcher, f"watcher {inline(status.watcher, SHORT)}")
    stuck = f"stuck after {status.stuck_minutes} min" if status.stuck_minutes > 0 else "stuck alerts off"
    several = len({t.project for t in status.finished[:FINISHED_SHOWN]}) > 1 or len(status.projects) > 1
    blocks = [
        header("kpsbot · KPS key-pair tasks"),
        context(
            f"kpsbot {inline(status.version, SHORT)}",
            watcher,
            stuck,
            f"Updated {date_token(now)}",
        ),
        _divider(),
        header("Projects"),
        *_project_blocks(status.projects, now, status.stuck_minutes),
        _divider(),
        header("Recently finished"),
        *_finished_blocks(status.finished, several),
        _divider(),
        header("Subscriptions"),
        *_subscription_blocks(status.subscriptions),
    ]
    return {"type": "home", "callback_id": CALLBACK_ID, "blocks": blocks[:MAX_VIEW_BLOCKS]}


# -- the listener --------------------------------------------------------------------------


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def handle_home_opened(
    event: Mapping[str, Any],
    client: Any,
    logger: logging.Logger | None = None,
    *,
    status: Callable[[], HomeStatus],
    clock: Callable[[], datetime] = _utcnow,
) -> None:
    """Publish the Home tab for the user who opened it; never raises (failures are logged)."""
    logger = logger or log
    if event.get("tab") != "home":  # the Messages tab, or an event from before Home tabs existed
        return
    user = event.get("user")
    if not isinstance(user, str) or not user:
        logger.info("ignoring app_home_opened without a user")
        return
    try:
        view = render_home(status(), clock())
        client.views_publish(user_id=user, view=view)
    except SlackApiError as exc:
        logger.warning("views.publish for user %s failed: %s", user, slack_reason(exc))
    except Exception:  # a listener must never crash; the user simply keeps the older view
        logger.error("could not publish the Home tab for user %s", user, exc_info=True)


def register(app: App, *, status: Callable[[], HomeStatus], clock: Callable[[], datetime] = _utcnow) -> None:
    @app.event("app_home_opened")
    def home_opened(event, client):  # noqa: ANN001 - Bolt injects by parameter name
        handle_home_opened(event, client, status=status, clock=clock)
