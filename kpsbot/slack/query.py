"""The `/kps-tasks` grammar: command text -> `Query`, and which tasks a query matches (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from kpsbot.kps.models import ACTIONS, RunningTask

HELP = "help"
LIST = "list"
STATUS = "status"

MAX_FILTER = 200  # characters of free text kept; keeps button values far below Slack's 2,000
MAX_TASK_ID = 128


@dataclass(frozen=True)
class Query:
    """What the user asked for: help, one task's status, or a (possibly filtered) task list."""

    kind: str = LIST
    failed: bool = False  # list failed tasks instead of running ones
    action: str | None = None  # RESET, REPLACE or UNBIND
    text: str = ""  # free text; every word must occur in some field
    task_id: str = ""  # for `status`
    problem: str = ""  # a usage mistake to show instead of running the query

    @property
    def filtered(self) -> bool:
        return bool(self.action or self.text)

    @property
    def words(self) -> list[str]:
        return self.text.lower().split()

    def matches(self, task: RunningTask) -> bool:
        if self.action and task.action != self.action:
            return False
        fields = (task.server_name, task.server_id, task.keypair_name, task.task_id)
        haystack = [value.lower() for value in fields]
        return all(any(word in value for value in haystack) for word in self.words)

    def to_text(self) -> str:
        """The canonical command text; `parse_command(q.to_text()) == q` for list queries."""
        if self.kind == HELP:
            return HELP
        if self.kind == STATUS:
            return f"{STATUS} {self.task_id}"
        parts = ["failed"] if self.failed else []
        if self.action:
            parts.append(self.action.lower())
        if self.text:
            parts.append(self.text)
        return " ".join(parts)

    def describe(self) -> str:
        """Human words for the filter, e.g. `reset, matching "web-"` (unescaped)."""
        parts = []
        if self.action:
            parts.append(self.action.lower())
        if self.text:
            parts.append(f'matching "{self.text}"')
        return ", ".join(parts)


def parse_command(text: str | None) -> Query:
    """`help | failed | status <task_id> | reset|replace|unbind | <text>`, combinable.

    Keywords are case-insensitive and may appear in any order (`web- reset` == `reset web-`);
    the first action word sets the action, and every other word is filter text.
    """
    tokens = (text or "").split()
    if not tokens:
        return Query()
    head = tokens[0].lower()
    if head == HELP:
        return Query(kind=HELP)
    if head == STATUS:
        if len(tokens) != 2:
            problem = "`status` needs exactly one task ID: `/kps-tasks status &lt;task_id&gt;`"
            return Query(kind=HELP, problem=problem)
        return Query(kind=STATUS, task_id=tokens[1][:MAX_TASK_ID])
    failed = False
    action = None
    rest = []
    for token in tokens:
        word = token.lower()
        if word == "failed" and not failed:
            failed = True
        elif word.upper() in ACTIONS and action is None:
            action = word.upper()
        else:
            rest.append(token)
    filter_text = " ".join(rest)[:MAX_FILTER].strip()
    return Query(failed=failed, action=action, text=filter_text)
