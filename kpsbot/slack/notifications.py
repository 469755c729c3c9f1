"""Block Kit for the watcher's channel notifications (pure), plus their plain-text reading for a terminal."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from kpsbot.kps.models import RunningTask
from kpsbot.slack.kit import context, mrkdwn, section
from kpsbot.slack.text import (
    MESSAGE_TEXT,
    action_emoji,
    action_label,
    cut,
    date_token,
    duration,
    safe,
)

Message = dict[str, Any]  # {"text": fallback, "blocks": [...]}

FIELD_TEXT = 2000  # a section field's text
VALUE = 200  # any single value from KPS inside a field
SHORT = 60  # a value inside a list line, so ten lines stay within one section
ERROR_TEXT = 1500
SAMPLE = 10  # tasks listed in a burst summary

OUTCOME_EMOJI = {"succeeded": ":white_check_mark:", "failed": ":x:", "unknown": ":grey_question:"}
OUTCOME_WORD = {"succeeded": "succeeded", "failed": "failed", "unknown": "finished (outcome unknown)"}


def _message(text: str, blocks: list[dict]) -> Message:
    return {"text": cut(text, MESSAGE_TEXT), "blocks": blocks[:50]}


def _utc(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=timezone.utc)


def _code(value: str | None, limit: int = VALUE) -> str:
    """A KPS value shown as inline code; backticks would end the code span early."""
    text = safe((value or "").replace("`", "'"), limit)
    return f"`{text}`" if text else "_none_"


def _what(task: RunningTask, limit: int = VALUE) -> str:
    """`:key: Replace` — the action with its emoji, or the raw operate_type when unknown."""
    return f"{action_emoji(task.action)} {safe(action_label(task.action, task.operate_type), limit)}"


def _server(task: RunningTask, limit: int = VALUE) -> str:
    name = safe(task.server_name, limit) or "unnamed server"
    return f"*{name}*"


def _name(task: RunningTask) -> str:
    """The task's server for a notification's fallback text (escaped: it is mrkdwn too)."""
    return safe(task.server_name or task.server_id or task.task_id, VALUE)


def _label(task: RunningTask) -> str:
    return safe(action_label(task.action, task.operate_type), VALUE)


def _task_fields(task: RunningTask) -> dict:
    fields = [
        f"*Server*\n{safe(task.server_name, VALUE) or '_unnamed_'} ({_code(task.server_id)})",
        f"*Key pair*\n{_code(task.keypair_name)}",
        f"*Started*\n{date_token(task.started_at)}",
        f"*Task*\n{_code(task.task_id)}",
    ]
    return {"type": "section", "fields": [mrkdwn(f, FIELD_TEXT) for f in fields]}


def _outcome_line(outcome: Mapping[str, Any]) -> str:
    result = outcome.get("outcome", "unknown")
    took = outcome.get("duration_s")
    line = f"{OUTCOME_EMOJI.get(result, ':grey_question:')} *{OUTCOME_WORD.get(result, result)}*"
    if took is not None:
        line += f" after about {duration(took)}"
    return line


def _error_text(outcome: Mapping[str, Any]) -> str:
    code, msg = outcome.get("error_code"), outcome.get("error_msg")
    if not code and not msg:
        return ""
    code_part = f"{_code(code)}: " if code else ""
    return f"*Error* {code_part}{safe(msg, ERROR_TEXT)}"


# -- per-task messages -------------------------------------------------------------------


def started_message(task: RunningTask) -> Message:
    label = _label(task)
    headline = f"{_what(task)} started on {_server(task)}"
    return _message(
        f"{label} started on {_name(task)}",
        [section(headline), _task_fields(task)],
    )


def start_message_finished(task: RunningTask, outcome: Mapping[str, Any]) -> Message:
    """The start message, edited once the task has finished: ✅/❌, duration and error at a glance."""
    result = outcome.get("outcome", "unknown")
    label = _label(task)
    headline = f"{_what(task)} on {_server(task)}: {_outcome_line(outcome)}"
    blocks = [section(headline), _task_fields(task)]
    if error := _error_text(outcome):
        blocks.append(section(error))
    return _message(f"{label} on {_name(task)} {OUTCOME_WORD.get(result, result)}", blocks)


def finished_reply(task: RunningTask, outcome: Mapping[str, Any]) -> Message:
    """The reply in the start message's thread."""
    result = outcome.get("outcome", "unknown")
    blocks = [section(_outcome_line(outcome))]
    if error := _error_text(outcome):
        blocks.append(section(error))
    elif result == "unknown" and outcome.get("error_msg"):
        blocks.append(context(safe(outcome["error_msg"], ERROR_TEXT)))
    if outcome.get("task_status"):
        blocks.append(context(f"KPS status {_code(outcome['task_status'])}"))
    return _message(f"{_label(task)} {OUTCOME_WORD.get(result, result)}", blocks)


def finished_message(task: RunningTask, outcome: Mapping[str, Any], *, note: str = "") -> Message:
    """A standalone finished message, for a task whose start was never announced on its own:
    what its start message would have become, plus a note on why it stands alone."""
    message = start_message_finished(task, outcome)
    if note:
        message["blocks"].append(context(note))
    return message


# -- summaries ---------------------------------------------------------------------------


def _counts_text(counts: Mapping[str, int]) -> str:
    return " · ".join(
        f"{n:,} {safe(label, VALUE)}" for label, n in sorted(counts.items(), key=lambda i: -i[1])
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
) -> Message:
    """One message for many starts (or finishes) in a single poll."""
    noun = "task" if total == 1 else "tasks"
    headline = f":zap: *{total:,} key-pair {noun} {kind}* since the last poll"
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
    return _message(f"{total:,} key-pair {noun} {kind}", blocks)


def baseline_message(project_id: str, location: str, count: int, counts: Mapping[str, int]) -> Message:
    noun = "task" if count == 1 else "tasks"
    where = f" in {safe(location, VALUE)}" if location else ""
    headline = f":eyes: Watching project {_code(project_id)}{where}: *{count:,} {noun} already running*"
    blocks = [section(headline)]
    if counts:
        blocks.append(context(_counts_text(counts)))
    blocks.append(
        context("New tasks will be announced here, and each start message updated when it finishes.")
    )
    return _message(
        f"Watching project {safe(project_id, VALUE)}{where}: {count:,} {noun} already running", blocks
    )


def outage_message(since: float, polls: int, last_error: str, auth_rejected: bool) -> Message:
    when = date_token(_utc(since))
    if auth_rejected:
        headline = f":no_entry: *KPS rejected kpsbot's credentials* since {when}"
        advice = (
            "Check CLOUD_SDK_AK / CLOUD_SDK_SK (or renew KPS_AUTH_TOKEN) and that the account "
            "may read KPS in this project. No task changes are reported until this is fixed."
        )
        text = "KPS rejected kpsbot's credentials"
    else:
        headline = f":rotating_light: *KPS API unreachable* since {when}"
        advice = "Task starts and finishes are not reported until KPS answers again."
        text = "KPS API unreachable"
    blocks = [
        section(headline),
        section(f"*Last error* ({polls:,} failed polls in a row): {safe(last_error, ERROR_TEXT)}"),
        context(advice),
    ]
    return _message(f"{text} (last error: {safe(last_error, ERROR_TEXT)})", blocks)


def recovery_message(since: float, until: float, polls: int) -> Message:
    took = duration(until - since)
    headline = f":white_check_mark: *KPS API reachable again* after {took} ({polls:,} failed polls)"
    return _message(f"KPS API reachable again after {took}", [section(headline)])


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
}
_DATE = re.compile(r"<!date\^\d+\^[^|>]*\|([^>]*)>")
_LINK = re.compile(r"<[^|>]+\|([^>]+)>")
_BOLD = re.compile(r"(?<!\w)[*_]([^*_\n]+)[*_](?!\w)")


def _unmrkdwn(text: str) -> str:
    text = _LINK.sub(r"\1", _DATE.sub(r"\1", text))
    text = _BOLD.sub(r"\1", text).replace("`", "")
    for code, char in EMOJI.items():
        text = text.replace(code, char)
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


def render_summary(kind: str, payload: dict) -> Message:
    """The message for an entry that is not about one task."""
    if kind in ("started_burst", "finished_burst"):
        return burst_message(
            kind.split("_")[0],
            payload["total"],
            payload["counts"],
            payload["sample"],
            payload.get("outcomes"),
        )
    if kind == "baseline":
        return baseline_message(
            payload["project_id"], payload["location"], payload["count"], payload["counts"]
        )
    if kind == "outage":
        return outage_message(
            payload["since"], payload["polls"], payload["last_error"], payload["auth_rejected"]
        )
    if kind == "recovered":
        return recovery_message(payload["since"], payload["until"], payload["polls"])
    raise ValueError(f"unknown notification kind {kind!r}")
