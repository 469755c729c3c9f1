"""Block Kit for the watcher's channel notifications (pure), plus their plain-text reading for a terminal."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kpsbot.kps.models import RunningTask, utc
from kpsbot.slack.kit import Message, context, message, mrkdwn, section
from kpsbot.slack.text import action_emoji, action_label, code, date_token, duration, inline, safe

__all__ = ["Message"]

FIELD_TEXT = 2000  # a section field's text
VALUE = 200  # any single value from KPS inside a field
SHORT = 60  # a value inside a list line, so ten lines stay within one section
ERROR_TEXT = 1500
SAMPLE = 10  # tasks listed in a summary

OUTCOME_EMOJI = {"succeeded": ":white_check_mark:", "failed": ":x:", "unknown": ":grey_question:"}
OUTCOME_WORD = {"succeeded": "succeeded", "failed": "failed", "unknown": "finished (outcome unknown)"}
# Why a finish stands alone: notes of kpsbot 0.1's queued entries, by how the start was shown.
LEGACY_START_NOTES = {
    "baseline": "Already running when kpsbot started watching.",
    "burst": "Its start was in a summary of many tasks.",
}


def _code(value: str | None, limit: int = VALUE) -> str:
    return code(value, limit, empty="_none_")


def _what(task: RunningTask, limit: int = VALUE) -> str:
    """`:key: Replace` — the action with its emoji, or the raw operate_type when unknown."""
    return f"{action_emoji(task.action)} {inline(action_label(task.action, task.operate_type), limit)}"


def _server(task: RunningTask, limit: int = VALUE) -> str:
    return f"*{inline(task.server_name, limit) or 'unnamed server'}*"


def _name(task: RunningTask) -> str:
    """The task's server for a notification's fallback text (plain: kit.message escapes it)."""
    return task.server_name or task.server_id or task.task_id


def _label(task: RunningTask) -> str:
    return action_label(task.action, task.operate_type)


def _in(project: str | None) -> str:
    """` in <project>` for the fallback text when notifications name their project."""
    return f" in {project}" if project else ""


def _project_line(project: str | None) -> list[dict]:
    return [context(f"Project *{inline(project, VALUE)}*")] if project else []


def _task_fields(task: RunningTask) -> dict:
    fields = [
        f"*Server*\n{inline(task.server_name, VALUE) or '_unnamed_'} ({_code(task.server_id)})",
        f"*Key pair*\n{_code(task.keypair_name)}",
        f"*Started*\n{date_token(task.started_at)}",
        f"*Task*\n{_code(task.task_id)}",
    ]
    return {"type": "section", "fields": [mrkdwn(f, FIELD_TEXT) for f in fields]}


def _outcome_line(outcome: Mapping[str, Any]) -> str:
    result = outcome.get("outcome", "unknown")
    took = outcome.get("duration_s")
    line = f"{OUTCOME_EMOJI.get(result, ':grey_question:')} *{OUTCOME_WORD.get(result, inline(result, 40))}*"
    if took is not None:
        line += f" after about {duration(took)}"
    return line


def _word(outcome: Mapping[str, Any]) -> str:
    result = outcome.get("outcome", "unknown")
    return OUTCOME_WORD.get(result, str(result))


def _error_text(outcome: Mapping[str, Any]) -> str:
    error_code, msg = outcome.get("error_code"), outcome.get("error_msg")
    if not error_code and not msg:
        return ""
    code_part = f"{_code(error_code)}: " if error_code else ""
    return f"*Error* {code_part}{safe(msg, ERROR_TEXT)}"


# -- per-task messages -------------------------------------------------------------------


def started_message(task: RunningTask, *, project: str | None = None) -> Message:
    headline = f"{_what(task)} started on {_server(task)}"
    return message(
        f"{_label(task)} started on {_name(task)}{_in(project)}",
        [section(headline), _task_fields(task), *_project_line(project)],
    )


def start_message_finished(task: RunningTask, outcome: Mapping[str, Any]) -> Message:
    """The start message, edited once the task has finished: ✅/❌, duration and error at a glance."""
    project = outcome.get("project")
    headline = f"{_what(task)} on {_server(task)}: {_outcome_line(outcome)}"
    blocks = [section(headline), _task_fields(task)]
    if error := _error_text(outcome):
        blocks.append(section(error))
    blocks += _project_line(project)
    return message(f"{_label(task)} on {_name(task)}{_in(project)} {_word(outcome)}", blocks)


def finished_reply(task: RunningTask, outcome: Mapping[str, Any]) -> Message:
    """The reply in the start message's thread."""
    blocks = [section(_outcome_line(outcome))]
    if error := _error_text(outcome):
        blocks.append(section(error))
    elif outcome.get("outcome") == "unknown" and outcome.get("error_msg"):
        blocks.append(context(safe(outcome["error_msg"], ERROR_TEXT)))
    if outcome.get("task_status"):
        blocks.append(context(f"KPS status {_code(outcome['task_status'])}"))
    project = outcome.get("project")
    blocks += _project_line(project)
    return message(f"{_label(task)}{_in(project)} {_word(outcome)}", blocks)


def finished_message(task: RunningTask, outcome: Mapping[str, Any]) -> Message:
    """A standalone finished message, for a task whose start has no message in this channel: what its
    start message would have become, plus a note on why it stands alone."""
    result = start_message_finished(task, outcome)
    note = outcome.get("start_note") or LEGACY_START_NOTES.get(outcome.get("start_kind") or "", "")
    if note:
        result["blocks"].append(context(safe(note, 500)))
    return result


def stuck_message(task: RunningTask, alert: Mapping[str, Any], *, in_thread: bool) -> Message:
    """A task still running after KPSBOT_STUCK_MINUTES: a thread reply shown in the channel, or a
    message of its own when its start has no message there."""
    project = alert.get("project")
    running = duration(alert.get("running_s"))
    headline = f":hourglass: {_what(task)} on {_server(task)} *still running after {running}*"
    blocks = [section(headline)]
    if not in_thread:
        blocks.append(_task_fields(task))
    blocks.append(context(f"kpsbot alerts once when a task runs longer than {alert.get('minutes')} min."))
    blocks += _project_line(project)
    return message(f"{_label(task)} on {_name(task)}{_in(project)} still running after {running}", blocks)


# -- summaries ---------------------------------------------------------------------------


def _counts_text(counts: Mapping[str, int]) -> str:
    return " · ".join(
        f"{n:,} {inline(label, VALUE)}" for label, n in sorted(counts.items(), key=lambda i: -i[1])
    )


def _sample_lines(sample: Sequence[Mapping[str, Any]], total: int) -> str:
    lines = []
    for item in sample[:SAMPLE]:
        task = RunningTask(**item["task"])
        line = (
            f"• {_what(task, SHORT)} · {_server(task, SHORT)} ({_code(task.server_id, SHORT)})"
            f" · key pair {_code(task.keypair_name, SHORT)}"
        )
        if "outcome" in item:
            line = f"• {OUTCOME_EMOJI.get(item['outcome'], ':grey_question:')}" + line[1:]
        lines.append(line)
    if total > len(lines):
        lines.append(f"…and {total - len(lines):,} more")
    return "\n".join(lines)


def burst_message(
    kind: str,
    total: int,
    counts: Mapping[str, int],
    sample: Sequence[Mapping[str, Any]],
    outcomes: Mapping[str, int] | None = None,
    *,
    project: str | None = None,
    minutes: int | None = None,
) -> Message:
    """One message for many starts, finishes or stuck tasks in a single poll."""
    noun = "task" if total == 1 else "tasks"
    what = f"still running after {minutes} min" if kind == "stuck" else kind
    emoji = ":hourglass:" if kind == "stuck" else ":zap:"
    headline = f"{emoji} *{total:,} key-pair {noun} {what}*" + (
        " since the last poll" if kind != "stuck" else ""
    )
    blocks = [section(headline)]
    summary = [_counts_text(counts)]
    if outcomes:
        summary.append(
            " · ".join(
                f"{OUTCOME_EMOJI.get(k, '')} {n:,} {OUTCOME_WORD.get(k, k)}"
                for k, n in sorted(outcomes.items())
            )
        )
    blocks.append(section("\n".join(s for s in summary if s) or "_no details_"))
    if sample:
        blocks.append(section(_sample_lines(sample, total)))
    blocks.append(context("Use `/kps-tasks` to see the tasks running now."))
    blocks += _project_line(project)
    return message(f"{total:,} key-pair {noun} {what}{_in(project)}", blocks)


def baseline_message(
    project_id: str, location: str, count: int, counts: Mapping[str, int], *, project: str | None = None
) -> Message:
    noun = "task" if count == 1 else "tasks"
    where = f" in {inline(location, VALUE)}" if location else ""
    name = f"*{inline(project, VALUE)}* ({_code(project_id)})" if project else _code(project_id)
    headline = f":eyes: Watching project {name}{where}: *{count:,} {noun} already running*"
    blocks = [section(headline)]
    if counts:
        blocks.append(context(_counts_text(counts)))
    blocks.append(
        context("New tasks will be announced here, and each start message updated when it finishes.")
    )
    plain_where = f" in {location}" if location else ""
    return message(
        f"Watching project {project or project_id}{plain_where}: {count:,} {noun} already running", blocks
    )


def outage_message(
    since: float, polls: int, last_error: str, auth_rejected: bool, *, project: str | None = None
) -> Message:
    when = date_token(utc(since))
    where = f" for project *{inline(project, VALUE)}*" if project else ""
    if auth_rejected:
        headline = f":no_entry: *KPS rejected kpsbot's credentials*{where} since {when}"
        advice = (
            "Check CLOUD_SDK_AK / CLOUD_SDK_SK (or renew KPS_AUTH_TOKEN) and that the account "
            "may read KPS in this project. No task changes are reported until this is fixed."
        )
        text = "KPS rejected kpsbot's credentials"
    else:
        headline = f":rotating_light: *KPS API unreachable*{where} since {when}"
        advice = "Task starts and finishes are not reported until KPS answers again."
        text = "KPS API unreachable"
    blocks = [
        section(headline),
        section(f"*Last error* ({polls:,} failed polls in a row): {safe(last_error, ERROR_TEXT)}"),
        context(advice),
    ]
    return message(f"{text}{_in(project)} (last error: {last_error})", blocks)


def recovery_message(since: float, until: float, polls: int, *, project: str | None = None) -> Message:
    took = duration(until - since)
    where = f" for project *{inline(project, VALUE)}*" if project else ""
    headline = f":white_check_mark: *KPS API reachable again*{where} after {took} ({polls:,} failed polls)"
    return message(f"KPS API reachable again{_in(project)} after {took}", [section(headline)])


def _burst(kind: str) -> Callable[[Mapping[str, Any]], Message]:
    def render(payload: Mapping[str, Any]) -> Message:
        return burst_message(
            kind,
            payload["total"],
            payload["counts"],
            payload["sample"],
            payload.get("outcomes"),
            project=payload.get("project"),
            minutes=payload.get("minutes"),
        )

    return render


SUMMARY_MESSAGES: dict[str, Callable[[Mapping[str, Any]], Message]] = {
    "started_burst": _burst("started"),
    "finished_burst": _burst("finished"),
    "stuck_burst": _burst("stuck"),
    "baseline": lambda p: baseline_message(
        p["project_id"], p["location"], p["count"], p["counts"], project=p.get("project")
    ),
    "outage": lambda p: outage_message(
        p["since"], p["polls"], p["last_error"], p["auth_rejected"], project=p.get("project")
    ),
    "recovered": lambda p: recovery_message(p["since"], p["until"], p["polls"], project=p.get("project")),
}
SUMMARIES = tuple(SUMMARY_MESSAGES)


def render_summary(kind: str, payload: Mapping[str, Any]) -> Message:
    """The message for an entry that is not about one task."""
    try:
        render = SUMMARY_MESSAGES[kind]
    except KeyError:
        raise ValueError(f"unknown notification kind {kind!r}") from None
    return render(payload)


# -- a terminal's reading of a message ---------------------------------------------------

EMOJI = {
    ":white_check_mark:": "✅",
    ":x:": "❌",
    ":grey_question:": "❔",
    ":arrows_counterclockwise:": "🔄",
    ":key:": "🔑",
    ":scissors:": "✂️",
    ":zap:": "⚡",
    ":eyes:": "👀",
    ":rotating_light:": "🚨",
    ":no_entry:": "⛔",
    ":hourglass:": "⌛",
}
_DATE = re.compile(r"<!date\^\d+\^[^|>]*\|([^>]*)>")
_LINK = re.compile(r"<[^|>]+\|([^>]+)>")
_BOLD = re.compile(r"(?<!\w)[*_]([^*_\n]+)[*_](?!\w)")


def _unmrkdwn(text: str) -> str:
    text = _LINK.sub(r"\1", _DATE.sub(r"\1", text))
    text = _BOLD.sub(r"\1", text).replace("`", "")
    for emoji, char in EMOJI.items():
        text = text.replace(emoji, char)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def plain_text(message: Message) -> str:
    """How a person reads the message in Slack, as plain lines."""
    lines = []
    for block in message.get("blocks", []):
        if block.get("text"):
            lines.append(_unmrkdwn(block["text"]["text"]))
        if block.get("fields"):
            parts = [_unmrkdwn(f["text"]).replace("\n", ": ", 1) for f in block["fields"]]
            lines.append(" · ".join(parts))
        if block.get("type") == "context":
            lines.append(" · ".join(_unmrkdwn(e.get("text", "")) for e in block["elements"]))
    return "\n".join(lines) if lines else message.get("text", "")
