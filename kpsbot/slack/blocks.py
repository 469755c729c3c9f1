"""Block Kit for `/kps-tasks`: task pages, one task's status, help and error replies (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from kpsbot.kps.client import KpsError
from kpsbot.kps.listing import ProjectTask
from kpsbot.kps.models import RunningTask, TaskStatus, parse_operate_type
from kpsbot.slack.kit import context, header, message, section
from kpsbot.slack.paging import PageRef, encode_page_value
from kpsbot.slack.query import Query
from kpsbot.slack.text import (
    MAX_BLOCKS,
    SECTION_TEXT,
    action_emoji,
    action_label,
    code,
    cut,
    date_token,
    duration,
    inline,
)

PREV, NEXT, REFRESH = "kps_tasks_prev", "kps_tasks_next", "kps_tasks_refresh"
PAGING_BLOCK = "kps_tasks_paging"
FIXED_BLOCKS = 5  # header, context, summary, failed projects, buttons
MAX_TASK_SECTIONS = MAX_BLOCKS - FIXED_BLOCKS

NAME = 200  # characters of a server or key pair name shown
ID = 100
ERROR_MSG = 500

STATE_WORDS = {
    "READY": (":hourglass_flowing_sand:", "Waiting to start"),
    "RUNNING": (":arrows_clockwise:", "Running"),
    "SUCCESS": (":white_check_mark:", "Succeeded"),
    "FAILED": (":x:", "Failed"),
}

COMMAND = "/kps-tasks"
HELP_LINES = (
    f"`{COMMAND}` – key-pair tasks running now, in every project kpsbot watches",
    f"`{COMMAND} cn-north-4_prod` – only that project's tasks (a project's name)",
    f"`{COMMAND} reset` · `replace` · `unbind` – only that kind of task",
    f"`{COMMAND} web-01` – tasks whose server name, server ID, key pair or task ID contain the text",
    f"`{COMMAND} reset web-` – filters combine",
    f"`{COMMAND} failed` – failed tasks and their errors (filters work here too)",
    f"`{COMMAND} status &lt;task_id&gt;` – one task's status",
    f"`{COMMAND} help` – this message",
)
SUBSCRIPTION_LINES = (
    f"`{COMMAND} subscribe` – post every task start, finish and stuck alert in this channel",
    f"`{COMMAND} subscribe cn-north-4_prod reset db-` – only those: projects, actions (reset · replace · "
    "unbind) and text in the server name, server ID or key pair",
    f"`{COMMAND} subscribe failures` – only failed tasks (and stuck alerts)",
    f"`{COMMAND} subscriptions` – what this channel is subscribed to, numbered",
    f"`{COMMAND} unsubscribe 2` · `{COMMAND} unsubscribe all` – remove subscriptions",
)


def _notice(text: str) -> dict:
    """One section of mrkdwn that is already escaped (or trusted), with the same fallback text."""
    text = cut(text, SECTION_TEXT)
    return {"text": text, "blocks": [section(text)]}


@dataclass(frozen=True)
class PageScope:
    """What a page is about: one project (its name and region), or several (each row names its own)."""

    names: tuple[str, ...]
    location: str = ""

    @property
    def several(self) -> bool:
        return len(self.names) > 1

    def context(self) -> str:
        if not self.names:
            return "No project is ready yet"
        if self.several:
            shown = ", ".join(inline(name, 60) for name in self.names[:6])
            more = f" and {len(self.names) - 6} more" if len(self.names) > 6 else ""
            return f"{len(self.names)} projects: {shown}{more}"
        return _where(self.names[0], self.location)

    def fallback(self) -> str:
        return f"in project {self.names[0]}" if len(self.names) == 1 else f"in {len(self.names)} projects"


def _where(project: str, location: str) -> str:
    return f"Project *{inline(project, ID)}* · {inline(location, ID) or 'unknown region'}"


def _button(action_id: str, label: str, value: str) -> dict:
    return {
        "type": "button",
        "action_id": action_id,
        "text": {"type": "plain_text", "text": label, "emoji": True},
        "value": value,
    }


def task_section(
    task: RunningTask, now: datetime, *, project: str | None = None, stuck_minutes: int = 0
) -> dict:
    """One task: action with emoji, server name and ID, key pair, start time and age (and "stuck"
    when it has run longer than the stuck threshold), its project when the page has several."""
    started = task.started_at
    lines = [
        f"{action_emoji(task.action)} *{inline(action_label(task.action, task.operate_type), 60)}*"
        f" · *{inline(task.server_name, NAME) or 'unnamed server'}* {code(task.server_id, ID)}",
        f"Key pair *{inline(task.keypair_name, NAME) or '?'}* · started {date_token(started)}",
    ]
    error_code = getattr(task, "task_error_code", None)
    error_msg = getattr(task, "task_error_msg", None)
    if error_code is not None or error_msg is not None:
        lines.append(f"Error {code(error_code, ID)}: {inline(error_msg, ERROR_MSG) or 'no message'}")
    elif started is not None:
        running = now - started
        lines[1] += f" · running {duration(running)}"
        if stuck_minutes and running.total_seconds() >= stuck_minutes * 60:
            lines[1] += " · :hourglass: *stuck*"
    where = f"Project *{inline(project, NAME)}* · " if project else ""
    lines.append(f"{where}Task {code(task.task_id, ID)}")
    return section("\n".join(lines))


def _errors_section(errors: Mapping[str, str]) -> dict:
    lines = [f":warning: Project *{inline(name, NAME)}*: {error}" for name, error in errors.items()]
    return section("\n".join(lines))


def kps_error_text(exc: KpsError) -> str:
    """A KPS failure in a few words: the error code and request id, never a traceback (escaped)."""
    if exc.timed_out:
        text = ":hourglass: KPS did not answer in time."
    elif exc.error_code == "connection":
        text = ":electric_plug: kpsbot cannot reach KPS right now."
    elif exc.error_code or exc.error_msg:
        text = f":warning: KPS refused the request: {code(exc.error_code, ID)} {inline(exc.error_msg, 300)}"
    elif exc.status:
        text = f":warning: KPS answered HTTP {exc.status}."
    else:
        text = ":warning: KPS sent an answer kpsbot cannot read."
    if exc.status and (exc.error_code or exc.error_msg):
        text += f" (HTTP {exc.status})"
    if exc.request_id:
        text += f" Request id {code(exc.request_id, ID)}."
    return text


def render_task_page(
    rows: Sequence[ProjectTask],
    total: int,
    offset: int,
    page_size: int,
    query: Query,
    scope: PageScope,
    now: datetime,
    *,
    errors: Mapping[str, str] | None = None,
    stuck_minutes: int = 0,
) -> dict:
    """A page of running (or failed) tasks with Previous / Next / Refresh buttons; `errors` are the
    projects that did not answer (name -> an escaped line), shown under the rows of the others."""
    kind = "failed" if query.failed else "running"
    shown = list(rows[: min(page_size, MAX_TASK_SECTIONS)])
    wanted = inline(query.describe(), 300)
    where = scope.fallback()
    if shown:
        first, last = offset + 1, offset + len(shown)
        summary = f"Showing *{first}–{last}* of *{total}* {kind} tasks"
        fallback = f"KPS {kind} tasks {where}: showing {first}–{last} of {total}"
    elif total and offset >= total:
        summary = f"This page is past the end: there are {total} {kind} tasks now. Press Refresh."
        fallback = f"KPS {kind} tasks {where}: past the end of the list"
    elif query.filtered:
        summary = f"No {kind} tasks match {wanted}."
        fallback = f"No {kind} KPS tasks {where} match the filter"
    else:
        summary = f"No {kind} tasks right now. :sparkles:" if kind == "running" else f"No {kind} tasks."
        fallback = f"No {kind} KPS tasks {where}"
    blocks = [
        header(f"{'Failed' if query.failed else 'Running'} KPS key-pair tasks"),
        context(
            scope.context(),
            f"Filter: {wanted}" if wanted else "",
            f"Updated {date_token(now, '%H:%M UTC')}",
        ),
        section(summary),
        *(
            task_section(
                row.task, now, project=row.project if scope.several else None, stuck_minutes=stuck_minutes
            )
            for row in shown
        ),
    ]
    if errors:
        blocks.append(_errors_section(errors))
    buttons = []
    if offset > 0:
        previous = PageRef(query, max(0, min(offset, total) - page_size))
        buttons.append(_button(PREV, "◀ Previous", encode_page_value(previous)))
    if shown and offset + len(shown) < total:
        following = PageRef(query, offset + len(shown))
        buttons.append(_button(NEXT, "Next ▶", encode_page_value(following)))
    buttons.append(_button(REFRESH, "Refresh", encode_page_value(PageRef(query, offset))))
    blocks.append({"type": "actions", "block_id": PAGING_BLOCK, "elements": buttons})
    return message(fallback, blocks)


def render_task_status(status: TaskStatus, project: str, location: str) -> dict:
    state, action = parse_operate_type(status.task_status)
    unknown = (":grey_question:", inline(status.task_status, 100) or "Unknown")
    emoji, words = STATE_WORDS.get(state or "", unknown)
    what = f" · {action_label(action)}" if action else ""
    lines = [
        f"{emoji} *{words}*{what}",
        f"Task {code(status.task_id, ID)} · server {code(status.server_id, ID)}",
    ]
    blocks = [header("KPS task status"), context(_where(project, location)), section("\n".join(lines))]
    return message(f"KPS task {status.task_id}: {words}", blocks)


def render_help(problem: str = "") -> dict:
    blocks = []
    if problem:
        blocks.append(section(f":warning: {problem}"))
    blocks.append(section("*kpsbot* shows Huawei Cloud KPS key-pair tasks.\n" + "\n".join(HELP_LINES)))
    blocks.append(section("*Notifications in a channel*\n" + "\n".join(SUBSCRIPTION_LINES)))
    usage = (
        f"Usage: {COMMAND} [help | failed | status <task_id> | <project> | reset | replace | unbind | <text>"
        " | subscribe … | subscriptions | unsubscribe <n>|all]"
    )
    return message(usage, blocks)


def render_kps_error(exc: KpsError) -> dict:
    """A short reply naming the KPS error code and request id; never a traceback."""
    text = kps_error_text(exc)
    if exc.timed_out or exc.error_code == "connection":
        text += " Try again in a minute."
    return _notice(text)


def render_notice(text: str) -> dict:
    """A one-line ephemeral notice (refusals, bad buttons, internal errors); `text` is trusted mrkdwn."""
    return _notice(text)
