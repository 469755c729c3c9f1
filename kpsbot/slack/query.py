"""The `/kps-tasks` grammar: command text -> `Query`, and which tasks a query matches (pure)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from kpsbot.kps.models import ACTIONS, RunningTask

HELP = "help"
LIST = "list"
STATUS = "status"
SUBSCRIBE = "subscribe"
SUBSCRIPTIONS = "subscriptions"
UNSUBSCRIBE = "unsubscribe"

MAX_FILTER = 200  # characters of free text kept; keeps button values far below Slack's 2,000
MAX_TASK_ID = 128
FAILURE_WORDS = ("failures", "failed")


@dataclass(frozen=True)
class Query:
    """What the user asked for: help, one task's status, a (possibly filtered) task list, or a
    change to this channel's subscriptions."""

    kind: str = LIST
    failed: bool = False  # list failed tasks instead of running ones (subscribe: failures only)
    action: str | None = None  # RESET, REPLACE or UNBIND (a list query)
    text: str = ""  # free text; every word must occur in some field
    task_id: str = ""  # for `status`
    problem: str = ""  # a usage mistake to show instead of running the query
    project: str | None = None  # a configured project's name (a list query)
    projects: tuple[str, ...] = ()  # subscribe: the projects (empty: all)
    actions: tuple[str, ...] = ()  # subscribe: the actions (empty: all)
    target: str = ""  # unsubscribe: a number or `all`

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

    def to_text(self, *, with_project: bool = True) -> str:
        """The canonical command text; `parse_command(q.to_text(), projects) == q` for list queries."""
        if self.kind == HELP:
            return HELP
        if self.kind == STATUS:
            return f"{STATUS} {self.task_id}"
        parts = ["failed"] if self.failed else []
        if self.project and with_project:
            parts.append(self.project)
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


def parse_command(text: str | None, projects: Collection[str] = ()) -> Query:
    """`help | failed | status <task_id> | <project name> | reset|replace|unbind | <text>`, combinable,
    and `subscribe …`, `subscriptions`, `unsubscribe <n>|all`.

    Keywords are case-insensitive and may appear in any order (`web- reset` == `reset web-`); the
    first action word sets the action, the first word that is a configured project's name (exactly)
    sets the project, and every other word is filter text.
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
    if head == SUBSCRIBE:
        return _subscribe(tokens[1:], projects)
    if head == SUBSCRIPTIONS:
        return Query(kind=SUBSCRIPTIONS)
    if head == UNSUBSCRIBE:
        target = tokens[1].lower() if len(tokens) == 2 else ""
        if target != "all" and not (target.isascii() and target.isdigit()):
            problem = "`unsubscribe` needs a number from `/kps-tasks subscriptions`, or `all`"
            return Query(kind=HELP, problem=problem)
        return Query(kind=UNSUBSCRIBE, target=target)
    failed = False
    action = project = None
    rest = []
    for token in tokens:
        word = token.lower()
        if word == "failed" and not failed:
            failed = True
        elif word.upper() in ACTIONS and action is None:
            action = word.upper()
        elif token in projects and project is None:
            project = token
        else:
            rest.append(token)
    filter_text = " ".join(rest)[:MAX_FILTER].strip()
    return Query(failed=failed, action=action, text=filter_text, project=project)


def _subscribe(tokens: list[str], projects: Collection[str]) -> Query:
    """`subscribe [<project name>…] [reset|replace|unbind…] [failures] [<text>]`."""
    chosen: list[str] = []
    actions: list[str] = []
    failures = False
    rest = []
    for token in tokens:
        word = token.lower()
        if token in projects:
            if token not in chosen:
                chosen.append(token)
        elif word.upper() in ACTIONS:
            if word.upper() not in actions:
                actions.append(word.upper())
        elif word in FAILURE_WORDS:
            failures = True
        else:
            rest.append(token)
    return Query(
        kind=SUBSCRIBE,
        projects=tuple(chosen),
        actions=tuple(a for a in ACTIONS if a in actions),
        failed=failures,
        text=" ".join(rest)[:MAX_FILTER].strip(),
    )
