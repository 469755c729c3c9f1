"""Reading the notifications channel of the fake Slack: which task each start, finish and edit is about."""

from __future__ import annotations

import re
from collections import Counter

from support.fake_slack import FakeSlack, assert_valid_message

CHANNEL = "C0SOAK"
TASK_FIELD = re.compile(r"\*Task\*\n`([^`]+)`")


def task_id_of(message: dict) -> str | None:
    for block in message.get("blocks") or []:
        for field in block.get("fields") or []:
            if match := TASK_FIELD.search(field.get("text", "")):
                return match.group(1)
    return None


def read_slack(fake: FakeSlack) -> dict:
    """What reached the channel, sorted by meaning: starts, finishes (replies or standalone), edits, other."""
    starts: list[tuple[str, float]] = []
    finishes: list[tuple[str, str, float]] = []  # task, text, at
    edits: list[str] = []
    other: Counter = Counter()
    for call in fake.calls:
        args = call["args"]
        if call["method"] == "chat.update":
            edits.append(task_id_of(fake.messages[(args["channel"], args["ts"])]))
            continue
        if call["method"] != "chat.postMessage":
            continue
        assert args["channel"] == CHANNEL
        assert_valid_message(args)
        text = args["text"]
        if args.get("thread_ts"):  # a finished reply in the thread of the start message
            parent = fake.messages[(args["channel"], args["thread_ts"])]
            finishes.append((task_id_of(parent), text, call["at"]))
        elif " started on " in text:
            starts.append((task_id_of(args), call["at"]))
        elif task_id_of(args):  # a standalone finished message (its start was never announced)
            finishes.append((task_id_of(args), text, call["at"]))
        else:
            other[text.split(" ")[0] + " " + text.split(" ")[1]] += 1
    return {"starts": starts, "finishes": finishes, "edits": edits, "other": other}
