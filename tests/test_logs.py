"""The log formatters mask configured secrets wherever they appear in a line; JSON lines stay JSON."""

import io
import json
import logging
import re
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone

import pytest
from support import run_process

from kpsbot.logs import (
    JsonFormatter,
    RedactingFormatter,
    emit_failure,
    json_active,
    log_context,
    setup_logging,
)


def _emit(formatter: logging.Formatter, *args, exc: Exception | None = None, **kwargs) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger("kpsbot.test.logs")
    logger.handlers[:] = [handler]
    logger.propagate = False
    if exc is None:
        logger.warning(*args, **kwargs)
    else:
        try:
            raise exc
        except Exception:
            logger.exception(*args, **kwargs)
    return stream.getvalue()


def test_secrets_in_message_arguments_and_tracebacks_are_masked():
    formatter = RedactingFormatter(["SK-SECRET-123", "xoxb-abc-def", None, "ab"])
    out = _emit(formatter, "calling with %s and token=%s", "SK-SECRET-123", "xoxb-abc-def")
    assert "SK-SECRET-123" not in out and "xoxb-abc-def" not in out and out.count("***") == 2
    out = _emit(formatter, "failed", exc=RuntimeError("bad key SK-SECRET-123"))
    assert "Traceback" in out and "SK-SECRET-123" not in out


def test_short_values_are_not_masked_and_longest_secret_wins():
    formatter = RedactingFormatter(["ab", "token-1", "token-12"])
    out = _emit(formatter, "ab token-12")
    assert out.strip().endswith("ab ***")


# -- JSON lines ----------------------------------------------------------------------------------


@pytest.fixture
def restore_logging():
    """setup_logging changes process-wide state: put it back after the test."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level, sys.excepthook, threading.excepthook
    yield
    root.handlers[:], level, sys.excepthook, threading.excepthook = saved
    root.setLevel(level)


BASE_KEYS = {"time", "level", "logger", "message"}


def _json_lines(out: str) -> list[dict]:
    assert out.endswith("\n")
    return [json.loads(line) for line in out.splitlines()]


def test_json_line_has_time_level_logger_and_message():
    before = datetime.now(timezone.utc)
    out = _emit(JsonFormatter([]), "polled %s in %d ms", "cn-north-4", 12)
    after = datetime.now(timezone.utc)
    [line] = _json_lines(out)
    assert set(line) == BASE_KEYS
    assert line["level"] == "WARNING"
    assert line["logger"] == "kpsbot.test.logs"
    assert line["message"] == "polled cn-north-4 in 12 ms"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
    when = datetime.fromisoformat(line["time"].replace("Z", "+00:00"))
    assert when.utcoffset() == timedelta(0)
    assert before - timedelta(milliseconds=1) <= when <= after


def test_json_context_fields_only_when_given():
    extra = log_context(project="cn-north-4_dev", task_id="t-1", channel="C0123")
    [line] = _json_lines(_emit(JsonFormatter([]), "started", extra=extra))
    assert set(line) == BASE_KEYS | {"project", "task_id", "channel"}
    assert (line["project"], line["task_id"], line["channel"]) == ("cn-north-4_dev", "t-1", "C0123")
    [line] = _json_lines(_emit(JsonFormatter([]), "started", extra=log_context(project="cn-north-4")))
    assert set(line) == BASE_KEYS | {"project"}
    assert log_context() == {}


def test_json_exception_is_one_field_on_one_line():
    out = _emit(JsonFormatter([]), "poll failed", exc=RuntimeError("line one\nline two"))
    assert out.count("\n") == 1
    [line] = _json_lines(out)
    assert set(line) == BASE_KEYS | {"exception"}
    assert line["level"] == "ERROR" and line["message"] == "poll failed"
    assert line["exception"].startswith("Traceback (most recent call last):\n")
    assert line["exception"].endswith("RuntimeError: line one\nline two")


def test_json_stack_info_is_one_field():
    [line] = _json_lines(_emit(JsonFormatter([]), "where am I", stack_info=True))
    assert set(line) == BASE_KEYS | {"stack"}
    assert line["stack"].startswith("Stack (most recent call last):\n")


@pytest.mark.parametrize(
    "secret",
    [
        "SK-SECRET-123",
        'quote"inside-secret',
        "back\\slash\\secret",
        'both\\"mixed"\\',
        "unicodé-秘密-ключ",
        "tab\tand\nnewline-secret",
        "</script>&<>'",
    ],
)
def test_json_masks_secrets_and_stays_valid(secret):
    formatter = JsonFormatter([secret, "xoxb-other-token"])
    extra = log_context(project=f"p-{secret}", task_id="t-1", channel="C01")
    out = _emit(formatter, "with %s and %s", secret, secret, extra=extra)
    out += _emit(formatter, "failed", exc=ValueError(f"bad key {secret}"))
    lines = _json_lines(out)
    assert len(lines) == 2
    assert lines[0]["message"] == "with *** and ***"
    assert lines[0]["project"] == "p-***"
    assert lines[1]["exception"].endswith("ValueError: bad key ***")
    for form in {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}:
        assert form not in out
    assert secret not in json.dumps(lines)


def test_setup_logging_picks_the_format(capsys, restore_logging):
    setup_logging("INFO", ["hunter2-secret"], fmt="json")
    assert json_active()
    logging.getLogger("kpsbot.x").info("token hunter2-secret", extra=log_context(channel="C1"))
    [line] = _json_lines(capsys.readouterr().err)
    assert line["message"] == "token ***" and line["channel"] == "C1"

    setup_logging("INFO", ["hunter2-secret"])
    assert not json_active()
    logging.getLogger("kpsbot.x").info("token hunter2-secret", extra=log_context(channel="C1"))
    err = capsys.readouterr().err
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO kpsbot\.x: token \*\*\*\n", err)


def test_emit_failure_is_a_json_record_or_the_plain_line(capsys, restore_logging):
    setup_logging("WARNING", [], fmt="json")
    emit_failure("Slack failed: ratelimited", 1)
    [line] = _json_lines(capsys.readouterr().err)
    assert set(line) == BASE_KEYS | {"exit_status"}
    assert line["level"] == "ERROR" and line["logger"] == "kpsbot"
    assert (line["message"], line["exit_status"]) == ("Slack failed: ratelimited", 1)

    setup_logging("WARNING", [])
    emit_failure("Slack failed: ratelimited", 1)
    assert capsys.readouterr().err == "kpsbot: Slack failed: ratelimited\n"


def test_json_uncaught_exceptions_are_records_and_text_restores_the_hooks(capsys, restore_logging):
    before = sys.excepthook, threading.excepthook
    setup_logging("INFO", ["hunter2-secret"], fmt="json")
    try:
        raise KeyError("hunter2-secret")
    except KeyError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    worker = threading.Thread(target=lambda: 1 / 0, name="poller")
    worker.start()
    worker.join()
    main, thread = _json_lines(capsys.readouterr().err)
    assert (main["level"], main["logger"], main["message"]) == ("CRITICAL", "kpsbot", "unhandled KeyError")
    assert main["exception"].endswith("KeyError: '***'")
    assert thread["message"] == "unhandled ZeroDivisionError in thread poller"
    assert "ZeroDivisionError" in thread["exception"]

    setup_logging("INFO", [])
    assert (sys.excepthook, threading.excepthook) == before


# -- the real program ----------------------------------------------------------------------------


def run_kpsbot(args: list[str], cwd, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run_process.run_kpsbot(args, cwd, run_process.clean_environment(**env))


def test_settings_error_is_one_json_line(tmp_path):
    env = {"KPSBOT_LOG_FORMAT": "json", "KPSBOT_PAGE_SIZE": "500", "KPS_PROJECT_ID": "p1"}
    result = run_kpsbot(["tasks"], tmp_path, env)
    assert result.returncode == 2
    [line] = _json_lines(result.stderr)
    assert set(line) == BASE_KEYS | {"exit_status"}
    assert (line["level"], line["logger"], line["exit_status"]) == ("ERROR", "kpsbot", 2)
    assert line["message"] == "KPSBOT_PAGE_SIZE must be between 1 and 40, e.g. KPSBOT_PAGE_SIZE=10"


def test_log_format_from_env_file_applies_to_a_settings_error(tmp_path):
    (tmp_path / ".env").write_text("KPSBOT_LOG_FORMAT=JSON\nKPS_REGION=Atlantis\n")
    (tmp_path / ".env").chmod(0o600)
    result = run_kpsbot(["tasks"], tmp_path, {})
    assert result.returncode == 2
    [line] = _json_lines(result.stderr)
    assert "KPS_REGION" in line["message"] and line["exit_status"] == 2


def test_malformed_log_format_is_reported_in_plain_text(tmp_path):
    result = run_kpsbot(["tasks"], tmp_path, {"KPSBOT_LOG_FORMAT": "yaml"})
    assert result.returncode == 2
    assert result.stderr == "kpsbot: KPSBOT_LOG_FORMAT must be one of text, json\n"


def test_text_format_settings_error_is_unchanged(tmp_path):
    result = run_kpsbot(["tasks"], tmp_path, {"KPSBOT_PAGE_SIZE": "500"})
    assert result.returncode == 2
    assert result.stderr == "kpsbot: KPSBOT_PAGE_SIZE must be between 1 and 40, e.g. KPSBOT_PAGE_SIZE=10\n"


def test_unreachable_kps_every_stderr_line_is_json_without_credentials(tmp_path):
    ak, sk = "AKJSONLOGTEST0001", 'sk-json"log\\test-0001'
    env = {
        "KPS_ENDPOINT": "http://127.0.0.1:9",
        "KPS_PROJECT_ID": "p1",
        "CLOUD_SDK_AK": ak,
        "CLOUD_SDK_SK": sk,
        "KPSBOT_LOG_FORMAT": "json",
        "KPSBOT_LOG_LEVEL": "DEBUG",
    }
    result = run_kpsbot(["tasks"], tmp_path, env)
    assert result.returncode == 1
    lines = _json_lines(result.stderr)
    assert any("cannot reach KPS" in line["message"] for line in lines)
    for secret in (ak, sk):
        for form in (secret, json.dumps(secret)[1:-1]):
            assert form not in result.stderr
