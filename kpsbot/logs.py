"""Logging set-up: one stderr handler, text or JSON lines, whose output never carries a configured secret.

JSON lines are built on `logging.Formatter` and `json` rather than python-json-logger: the fields are few
and fixed, and the secrets must be masked in each value before it is serialized (so that masking can
never break the JSON), which that library would need the same code hooked into it to do.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterable
from datetime import datetime, timezone
from types import TracebackType
from typing import Any

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MASK = "***"
# What a JSON line carries from a record's `extra=`, when the record has it.
CONTEXT_FIELDS = ("project", "task_id", "channel", "exit_status")


class RedactingFormatter(logging.Formatter):
    """Last line of defence: masks every configured secret in the finished line, tracebacks included."""

    def __init__(self, secrets: Iterable[str | None], fmt: str = FORMAT) -> None:
        super().__init__(fmt)
        # Longest first, so a secret that contains another is masked whole.
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def format(self, record: logging.LogRecord) -> str:
        return self.mask(super().format(record))


class JsonFormatter(RedactingFormatter):
    """One JSON object a line: `time`, `level`, `logger`, `message`, the context fields the record
    carries, and `exception` (the whole traceback, one string) when there is one.

    Secrets are masked in every value before serializing, so a secret with `"` or `\\` in it is
    masked like any other and the line stays valid JSON.
    """

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """RFC 3339 in UTC with milliseconds: `2026-12-01T17:44:16.585Z`."""
        when = datetime.fromtimestamp(record.created, timezone.utc)
        return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                fields[name] = value if isinstance(value, (str, int, float, bool)) else str(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            fields["exception"] = record.exc_text
        if record.stack_info:
            fields["stack"] = self.formatStack(record.stack_info)
        masked = {key: self.mask(value) if isinstance(value, str) else value for key, value in fields.items()}
        return json.dumps(masked, ensure_ascii=False)


def log_context(
    *, project: str | None = None, task_id: str | None = None, channel: str | None = None
) -> dict[str, str]:
    """The `extra=` of a record about a project, task or channel; JSON lines carry these as fields
    (text lines do not show them): `log.info("started", extra=log_context(project=name, task_id=id))`."""
    given = {"project": project, "task_id": task_id, "channel": channel}
    return {name: value for name, value in given.items() if value is not None}


def setup_logging(level: str, secrets: Iterable[str | None], fmt: str = "text") -> None:
    """Every record to stderr, `fmt` "text" (`FORMAT`) or "json" (`JsonFormatter`), secrets masked.

    In JSON an uncaught exception is logged as one record too, rather than printed as a bare traceback.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(secrets) if fmt == "json" else RedactingFormatter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # urllib3 logs full URLs with query strings at DEBUG; keep its chatter down.
    logging.getLogger("urllib3").setLevel(max(logging.INFO, root.level))
    _set_excepthooks(fmt == "json")


def json_active() -> bool:
    """Whether stderr gets JSON lines (setup_logging was called with fmt="json")."""
    return any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)


def emit_failure(message: str, exit_status: int) -> None:
    """The one-line reason a command stops with `exit_status`: a record of the `kpsbot` logger with
    `exit_status` as a field when JSON logging is set up, else the plain line `kpsbot: <message>`."""
    if json_active():
        logging.getLogger("kpsbot").error(message, extra={"exit_status": exit_status})
    else:
        print(f"kpsbot: {message}", file=sys.stderr, flush=True)


# -- uncaught exceptions in JSON ------------------------------------------------------------

_replaced_hooks: list = []  # the sys and threading excepthooks that ours stand in for


def _log_uncaught(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None, where: str = ""
) -> None:
    logging.getLogger("kpsbot").critical(
        "unhandled %s%s", exc_type.__name__, where, exc_info=(exc_type, exc, tb)
    )


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or isinstance(args.exc_value, SystemExit):
        threading.__excepthook__(args)  # Python's own: silent for SystemExit
        return
    where = f" in thread {args.thread.name}" if args.thread else ""
    _log_uncaught(args.exc_type, args.exc_value, args.exc_traceback, where)


def _set_excepthooks(json_lines: bool) -> None:
    """Ours in JSON; in text, whichever hooks were there before ours again."""
    ours = sys.excepthook is _log_uncaught
    if json_lines and not ours:
        _replaced_hooks[:] = [sys.excepthook, threading.excepthook]
        sys.excepthook, threading.excepthook = _log_uncaught, _log_uncaught_in_thread
    elif not json_lines and ours:
        sys.excepthook, threading.excepthook = _replaced_hooks
