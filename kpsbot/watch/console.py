"""The terminal as a channel: notifications printed as a person would read them in Slack (`kpsbot
demo`, and `kpsbot watch` without KPSBOT_CHANNEL)."""

from __future__ import annotations

import itertools
import json
import sys
import time
from collections.abc import Callable
from typing import IO

from kpsbot.slack import notifications as note
from kpsbot.slack.sender import CHANNEL, DeliveryFailure


class ConsoleSender:
    """Prints each notification; threads show as `↳ re <start message>`, edits as `✎ edited`."""

    def __init__(
        self,
        stream: IO[str] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        show_blocks: bool = False,
    ) -> None:
        self.stream = stream
        self.show_blocks = show_blocks
        self._clock = clock
        self._seq = itertools.count(1)
        self._headlines: dict[str, str] = {}  # ts -> first line, to say which thread a reply is in

    def _write(self, text: str) -> None:
        stream = self.stream or sys.stdout
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError) as exc:  # a closed terminal or pipe: retrying cannot help
            raise DeliveryFailure(f"cannot print to the terminal ({exc})", CHANNEL) from None

    def _print(self, prefix: str, lines: list[str]) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(self._clock()))
        indent = " " * (len(stamp) + 3 + len(prefix))
        out = [f"[{stamp}] {prefix}{lines[0]}"] + [indent + line for line in lines[1:]]
        self._write("\n".join(out) + "\n")

    def _print_blocks(self, message: note.Message) -> None:
        if self.show_blocks:
            self._write(json.dumps(message.get("blocks", []), indent=2, ensure_ascii=False) + "\n")

    def post(
        self, channel: str, message: note.Message, *, thread_ts: str | None = None, broadcast: bool = False
    ) -> str:
        lines = note.plain_text(message).splitlines() or [message.get("text", "")]
        ts = f"{self._clock():.6f}-{next(self._seq)}"
        if thread_ts:
            about = self._headlines.get(thread_ts)
            self._print("  ↳ ", [f"re {about}: {lines[0]}" if about else lines[0], *lines[1:]])
        else:
            self._headlines[ts] = lines[0]
            self._print("", lines)
        self._print_blocks(message)
        return ts

    def update(self, channel: str, ts: str, message: note.Message) -> None:
        lines = note.plain_text(message).splitlines() or [message.get("text", "")]
        self._headlines[ts] = lines[0]
        self._print("  ✎ edited: ", lines[:1])
        self._print_blocks(message)
