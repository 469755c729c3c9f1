"""Typed views of KPS task records; tolerant of missing, extra and unexpected fields."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, KeysView, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, NamedTuple

ACTIONS = ("RESET", "REPLACE", "UNBIND")
STATES = ("READY", "RUNNING", "SUCCESS", "FAILED")
TASK_FIELDS = ("task_id", "operate_type", "task_time", "server_name", "server_id", "keypair_name")


def listing_fingerprint(crc: int, size: int) -> int:
    """A listing's pages as KPS sent them, in one number: the CRC-32 of their bytes, in order, and
    their total length (two listings collide far more rarely than by CRC-32 alone)."""
    return (crc & 0xFFFFFFFF) << 31 | size & 0x7FFFFFFF  # fits SQLite's 64-bit integer


def key_digest(task_id: str, task_time: str) -> int:
    """A task's part of a snapshot digest: the digest of a set of tasks is the sum of theirs, so it
    does not depend on order and follows additions and removals."""
    return zlib.crc32(f"{task_id}\x1f{task_time}".encode())


def api_fields(row: Any) -> dict[str, str] | None:
    """The six API fields of a well-formed row (every one a string, a task_id that is its own
    stripped self), or None when the row needs RunningTask.from_api's coercion. A row that is
    exactly the six fields, in the API's order, is returned as it is (not copied)."""
    if type(row) is not dict:
        return None
    fields = row if tuple(row) == TASK_FIELDS else {name: row.get(name) for name in TASK_FIELDS}
    for value in fields.values():
        if type(value) is not str:
            return None
    task_id = fields["task_id"]
    if not task_id or task_id.strip() != task_id:
        return None
    return fields  # type: ignore[return-value]  # every value was just checked to be a str


class MalformedTask(ValueError):
    """A task record that cannot be used (not an object, or no task_id)."""


def parse_operate_type(value: str) -> tuple[str | None, str | None]:
    """`RUNNING_RESET` -> ("RUNNING", "RESET"); an unknown value -> (None, None).

    The published docs disagree on the prefix (FAILED_RESET vs RUNNING_RESET), so any
    `<STATE>_<ACTION>` is accepted and the action comes from the suffix.
    """
    state, sep, action = (value or "").upper().rpartition("_")
    if not sep or action not in ACTIONS:
        return None, None
    return state or None, action


def utc(epoch: float | None) -> datetime | None:
    """Epoch seconds -> aware UTC datetime (None stays None)."""
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=timezone.utc)


def parse_task_time(value: Any) -> datetime | None:
    """Epoch milliseconds (string or number) -> aware UTC datetime; None when unusable."""
    try:
        millis = int(str(value).strip())
        return datetime.fromtimestamp(millis / 1000, tz=timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _text(value: Any) -> str:
    if type(value) is str:
        return value
    return "" if value is None else str(value)


@dataclass(frozen=True, slots=True)
class RunningTask:
    task_id: str
    operate_type: str = ""
    task_time: str = ""
    server_name: str = ""
    server_id: str = ""
    keypair_name: str = ""

    @classmethod
    def from_api(cls, record: Any) -> RunningTask:
        if not isinstance(record, dict):
            raise MalformedTask(f"task is not an object: {str(record)[:200]!r}")
        get = record.get
        task_id = _text(get("task_id")).strip()
        if not task_id:
            raise MalformedTask(f"task has no task_id: {str(record)[:200]!r}")
        # This runs once per task per poll (100,000s): plain calls, no generators.
        return cls(
            task_id,
            _text(get("operate_type")),
            _text(get("task_time")),
            _text(get("server_name")),
            _text(get("server_id")),
            _text(get("keypair_name")),
        )

    @property
    def action(self) -> str | None:
        """RESET, REPLACE or UNBIND; None when operate_type is not of a known shape."""
        return parse_operate_type(self.operate_type)[1]

    @property
    def started_at(self) -> datetime | None:
        return parse_task_time(self.task_time)

    def to_api(self) -> dict[str, str]:
        """The record with the API's field names (TASK_FIELDS), spelt out: it runs for every task listed."""
        return {
            "task_id": self.task_id,
            "operate_type": self.operate_type,
            "task_time": self.task_time,
            "server_name": self.server_name,
            "server_id": self.server_id,
            "keypair_name": self.keypair_name,
        }


@dataclass(frozen=True, slots=True)
class FailedTask(RunningTask):
    task_error_code: str = ""
    task_error_msg: str = ""

    @classmethod
    def from_api(cls, record: Any) -> FailedTask:
        base = RunningTask.from_api(record)
        return cls(
            **base.to_api(),
            task_error_code=_text(record.get("task_error_code")),
            task_error_msg=_text(record.get("task_error_msg")),
        )

    def to_api(self) -> dict[str, str]:
        record = RunningTask.to_api(self)
        record["task_error_code"] = self.task_error_code
        record["task_error_msg"] = self.task_error_msg
        return record


class TaskStatus(NamedTuple):
    task_id: str
    task_status: str = ""
    server_id: str = ""

    @classmethod
    def from_api(cls, record: Any, task_id: str = "") -> TaskStatus:
        if not isinstance(record, dict):
            raise MalformedTask(f"status is not an object: {str(record)[:200]!r}")
        return cls(
            _text(record.get("task_id")) or task_id,
            _text(record.get("task_status")),
            _text(record.get("server_id")),
        )

    @property
    def state(self) -> str | None:
        """READY, RUNNING, SUCCESS or FAILED (None for anything else)."""
        state, _ = parse_operate_type(self.task_status)
        return state if state in STATES else None


class TaskPage(NamedTuple):
    """One page of a task list, plus the rows that could not be parsed."""

    total: int
    tasks: list
    skipped: list


class TaskRecords(Mapping):
    """Running tasks by task_id, kept as the API's raw records; a RunningTask is built on access.

    A poll of 100,000 unchanged tasks only compares ids and times, so it should not build 100,000
    objects; and when the listing is byte for byte the one the snapshot was last reconciled with
    (its `fingerprint`), it need not even index them: pages added with `add_page` are indexed on
    first use. Every kept record has a string `task_time` (odd rows are normalised on the way in).
    """

    def __init__(
        self,
        records: dict[str, dict] | None = None,
        skipped: list | None = None,
        *,
        on_problem: Callable[[MalformedTask], None] | None = None,
    ) -> None:
        """`on_problem` hears of each unusable row of the pages added with `add_page`, when they
        are indexed."""
        self._on_problem = on_problem
        self._records: dict[str, dict] = records if records is not None else {}
        self._skipped: list = skipped if skipped is not None else []
        self._pending: list[list] = []  # pages not indexed yet
        self._trusted: int | None = None  # see trust()
        # The digest of the (task_id, task_time) set (see key_digest), kept up to date by extend().
        self._digest = sum(key_digest(task_id, row["task_time"]) for task_id, row in self._records.items())
        # The listing's pages as bytes (see listing_fingerprint); None when not known.
        self.fingerprint: int | None = None

    # -- lazily indexed -------------------------------------------------------------------------

    def add_page(self, rows: list) -> None:
        """Keep a page of raw rows, to be indexed when something needs the tasks."""
        self._pending.append(rows)

    def _index_pending(self) -> None:
        while self._pending:
            for problem in self._index(self._pending.pop(0)):
                if self._on_problem is not None:
                    self._on_problem(problem)

    def trust(self, count: int) -> None:
        """The listing is known to hold `count` tasks and no unusable row (its fingerprint is that
        of a listing that did): len() and `skipped` answer without indexing the pages."""
        self._trusted = count

    @property
    def records(self) -> dict[str, dict]:
        self._index_pending()
        return self._records

    @property
    def skipped(self) -> list:
        if self._trusted is not None and self._pending:
            return []
        self._index_pending()
        return self._skipped

    @property
    def digest(self) -> int:
        self._index_pending()
        return self._digest

    def __getitem__(self, task_id: str) -> RunningTask:
        return RunningTask.from_api(self.records[task_id])

    def __iter__(self) -> Iterator[str]:
        return iter(self.records)

    def __len__(self) -> int:
        if self._trusted is not None and self._pending:
            return self._trusted
        return len(self.records)

    def keys(self) -> KeysView[str]:  # a real dict view: set operations on it run in C
        return self.records.keys()

    def extend(self, rows: list) -> list[MalformedTask]:
        """Index a page of raw rows now (after any added before; first copy of an id wins);
        unusable rows go to `skipped`. Returns why each skipped row was unusable."""
        self._index_pending()
        return self._index(rows)

    def _index(self, rows: list) -> list[MalformedTask]:
        """The common row is checked inline: this loop runs for every task on every changed poll."""
        records, problems = self._records, []
        digest, crc = 0, zlib.crc32
        for row in rows:
            if type(row) is dict:
                task_id = row.get("task_id")
                task_time = row.get("task_time")
                if type(task_id) is str and task_id and task_id.strip() == task_id and type(task_time) is str:
                    if task_id not in records:
                        records[task_id] = row
                        digest += crc(f"{task_id}\x1f{task_time}".encode())  # key_digest, inline
                    continue
            try:
                task = RunningTask.from_api(row)  # coerces odd ids and times, or raises MalformedTask
            except MalformedTask as exc:
                self._skipped.append(row)
                problems.append(exc)
                continue
            if task.task_id not in records:
                records[task.task_id] = task.to_api()
                digest += key_digest(task.task_id, task.task_time)
        self._digest += digest
        return problems
