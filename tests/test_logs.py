"""The log formatter masks configured secrets wherever they appear in a line."""

import io
import logging

from kpsbot.logs import RedactingFormatter


def _emit(formatter: logging.Formatter, *args, exc: Exception | None = None) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger("kpsbot.test.logs")
    logger.handlers[:] = [handler]
    logger.propagate = False
    if exc is None:
        logger.warning(*args)
    else:
        try:
            raise exc
        except Exception:
            logger.exception(*args)
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
