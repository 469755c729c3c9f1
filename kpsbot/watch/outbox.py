"""Delivery: claims the due outbox entries, sends each through the handler of its kind, and records
the result (sent, retry later, failed for good), channel by channel so one channel's trouble never
holds back another's."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import NamedTuple, Protocol

from kpsbot.kps.models import RunningTask
from kpsbot.logs import log_context
from kpsbot.slack import notifications as note
from kpsbot.slack.sender import AUTH, CHANNEL, CONNECTION, GONE, RATE_LIMITED, SERVER, DeliveryFailure
from kpsbot.store import OutboxEntry, Store

log = logging.getLogger(__name__)

CONSOLE = "console"  # the channel name of the terminal (demo, `watch` without KPSBOT_CHANNEL)
ROUNDS = 4  # claims per delivery: entries that waited for one sent in the round before go too
# Channels delivered at once. A channel's worker mostly waits for its pacer, and a channel that
# waits for a worker gets less of the cycle's delivery time: one worker per channel up to this.
CHANNEL_WORKERS = 32


class Sender(Protocol):
    """Where notifications go. `post` returns the message's ts (used for threads and edits)."""

    def post(
        self, channel: str, message: note.Message, *, thread_ts: str | None = None, broadcast: bool = False
    ) -> str: ...

    def update(self, channel: str, ts: str, message: note.Message) -> None: ...


class DeliveryMetrics(Protocol):
    def notification_sent(self, kind: str) -> None: ...

    def notification_failed(self, reason: str) -> None: ...


class DeliveryReport(NamedTuple):
    delivered: int  # sent this round
    pending: int
    failed: int  # entries Slack refused for good (all time, as /healthz shows them)
    error: str | None = None  # why this round's last failed send failed (None: no send failed)
    skipped: int = 0  # settled this round without a send (e.g. no start message to edit)


class Sent(NamedTuple):
    ts: str | None
    thread: bool = False  # the task's start message: later replies go in its thread


class Skipped(NamedTuple):
    reason: str


Result = Sent | Skipped


class Pacer:
    """Slack posts about one message a second per channel: a token bucket per channel (`burst` at
    once, then one each `interval` seconds), so many channels go in parallel but none trips 429."""

    def __init__(self, interval: float = 1.0, burst: int = 5, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self.burst = burst
        self._clock = clock
        self._tokens: dict[str, tuple[float, float]] = {}  # channel -> (tokens, at)
        self._lock = threading.Lock()

    def delay(self, channel: str) -> float:
        """Take a token for `channel`; how long to wait before using it."""
        if self.interval <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            tokens, at = self._tokens.get(channel, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) / self.interval) - 1.0
            self._tokens[channel] = (tokens, now)
        return max(0.0, -tokens * self.interval)

    def give_back(self, channel: str) -> None:
        """Return the token `delay` took, unused (the round ended before its turn came)."""
        with self._lock:
            if channel in self._tokens:
                tokens, at = self._tokens[channel]
                self._tokens[channel] = (min(float(self.burst), tokens + 1.0), at)


class Outbox:
    """Sends due entries oldest first per channel, several channels at once; records each result."""

    def __init__(
        self,
        store: Store,
        senders: Mapping[str, Sender],
        *,
        fixed_channel: str | None = None,
        clock: Callable[[], float] = time.time,
        base_backoff: float = 30.0,
        max_backoff: float = 3600.0,
        max_attempts: int = 20,
        max_per_round: int = 500,
        pacer: Pacer | None = None,
        channel_workers: int = CHANNEL_WORKERS,
        metrics: DeliveryMetrics | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """`senders` by channel: "console" for the terminal, "*" for every other channel (Slack).
        `fixed_channel` is where entries of kpsbot 0.1 (queued before channels were per entry) go."""
        self.store = store
        self.senders = dict(senders)
        self.fixed_channel = fixed_channel
        self.clock = clock
        self.base_backoff = base_backoff
        self.max_backoff = max_backoff
        self.max_attempts = max_attempts
        self.max_per_round = max_per_round
        self.pacer = pacer if pacer is not None else Pacer()
        self.channel_workers = channel_workers
        self.metrics = metrics
        self._sleep = sleep
        self._inflight = 0  # sends between their call and their record
        self._idle = threading.Condition()

    def sender(self, channel: str) -> Sender | None:
        return self.senders.get(channel) or (self.senders.get("*") if channel != CONSOLE else None)

    # -- a round --------------------------------------------------------------------------------

    def deliver(
        self,
        stop: threading.Event | None = None,
        may_send: Callable[[], bool] | None = None,
        deadline: float | None = None,
    ) -> DeliveryReport:
        """Send the due entries. `stop` set ends the round between entries, never inside one;
        `may_send` is asked before every send (the watcher lease is still ours); past `deadline`
        (time.monotonic()) no new send starts, and the rest waits for the next delivery."""
        halt = threading.Event()  # the bot token is refused, or the lease was lost: stop everywhere
        tally = _Tally(deadline)
        # A round can make entries due that waited for one it sent (a finish for its start message):
        # claim again, a few times, while rounds still send something.
        for _ in range(ROUNDS):
            before = tally.delivered
            by_channel: dict[str, list[OutboxEntry]] = {}
            for entry in self.store.due_outbox(self.clock(), limit=self.max_per_round):
                by_channel.setdefault(self._channel(entry), []).append(entry)
            if not by_channel:
                break
            self._round(by_channel, tally, stop, halt, may_send)
            if tally.delivered == before or halt.is_set() or (stop is not None and stop.is_set()):
                break
            if tally.out_of_time():
                break
        return DeliveryReport(
            tally.delivered,
            self.store.pending_deliveries(),
            self.store.failed_deliveries(),
            tally.error,
            tally.skipped,
        )

    def _round(
        self,
        by_channel: dict[str, list[OutboxEntry]],
        tally: _Tally,
        stop: threading.Event | None,
        halt: threading.Event,
        may_send: Callable[[], bool] | None,
    ) -> None:
        def run(channel: str) -> None:
            self._deliver_channel(channel, by_channel[channel], tally, stop, halt, may_send)

        if len(by_channel) <= 1 or self.channel_workers <= 1:
            for channel in by_channel:
                run(channel)
            return
        from concurrent.futures import ThreadPoolExecutor

        workers = min(self.channel_workers, len(by_channel))
        with ThreadPoolExecutor(workers, thread_name_prefix="kpsbot-deliver") as pool:
            list(pool.map(run, by_channel))

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no entry is between its send and its record (call after setting `stop`);
        False if one still was after `timeout` seconds."""
        with self._idle:
            return self._idle.wait_for(lambda: self._inflight == 0, timeout)

    def _channel(self, entry: OutboxEntry) -> str:
        return entry.channel or self.fixed_channel or CONSOLE

    def _context(self, entry: OutboxEntry) -> dict[str, str]:
        """The JSON log fields of a record about `entry`."""
        return log_context(project=entry.project, task_id=entry.task_id, channel=self._channel(entry))

    def _deliver_channel(
        self,
        channel: str,
        entries: list[OutboxEntry],
        tally: _Tally,
        stop: threading.Event | None,
        halt: threading.Event,
        may_send: Callable[[], bool] | None,
    ) -> None:
        sender = self.sender(channel)
        for entry in entries:
            if halt.is_set() or (stop is not None and stop.is_set()) or tally.out_of_time():
                return
            if sender is None:
                self.store.mark_failed(
                    entry.id, error=f"no way to post to {channel} is configured", status="skipped"
                )
                tally.add(skipped=1)
                continue
            if entry.kind in PACED:
                wait = self.pacer.delay(channel)
                if tally.out_of_time(wait):
                    self.pacer.give_back(channel)
                    return
                if wait and (stop.wait(wait) if stop is not None else self._sleep(wait)):
                    return
            if may_send is not None and not may_send():
                log.warning("the watcher lease is no longer ours: leaving the outbox to its new holder")
                halt.set()
                return
            try:
                with self._sending():
                    result = HANDLERS.get(entry.kind, send_summary)(self, entry, channel, sender)
                    self._record(entry, channel, result)
            except DeliveryFailure as exc:
                if self.metrics is not None:
                    self.metrics.notification_failed(exc.metric_reason)
                if exc.kind == GONE and entry.kind == "finished_edit":
                    log.warning(
                        "start message of task %s can no longer be edited: %s",
                        entry.task_id,
                        exc.reason,
                        extra=self._context(entry),
                    )
                    self.store.mark_failed(entry.id, error=exc.reason, status="skipped")
                    tally.add(skipped=1)
                    continue
                tally.add(error=exc.reason)
                if not self._failed(entry, channel, exc, halt):
                    return  # the rest of this channel waits for the next round
                continue
            except Exception as exc:  # a bug must not stop the queue behind this entry
                log.exception(
                    "cannot deliver the %s notification %s",
                    entry.kind,
                    entry.dedup_key,
                    extra=self._context(entry),
                )
                reason = f"{type(exc).__name__}: {exc}"
                tally.add(error=reason)
                self._retry(entry, DeliveryFailure(reason))
                continue
            if isinstance(result, Sent):
                tally.add(delivered=1)
                if self.metrics is not None:
                    self.metrics.notification_sent(entry.kind)
            else:
                tally.add(skipped=1)

    def _sending(self) -> _InFlight:
        return _InFlight(self)

    def _record(self, entry: OutboxEntry, channel: str, result: Result) -> None:
        if isinstance(result, Sent):
            self.store.mark_sent(entry, now=self.clock(), channel=channel, ts=result.ts, thread=result.thread)
        else:
            self.store.mark_failed(entry.id, error=result.reason, status="skipped")

    def _failed(self, entry: OutboxEntry, channel: str, exc: DeliveryFailure, halt: threading.Event) -> bool:
        """Record a failed send; True if the channel's next entries may still be tried this round."""
        if exc.kind == AUTH:
            log.error(
                "Slack refused the bot's token (%s): fix SLACK_BOT_TOKEN; notifications stay queued",
                exc.reason,
            )
            self._retry(entry, exc)
            halt.set()
            return False
        if exc.kind == CHANNEL:
            log.error(
                "Slack refused channel %s for good (%s): the %s notification %s is dropped; invite the bot "
                "to the channel (its subscriptions are kept)",
                channel,
                exc.reason,
                entry.kind,
                entry.dedup_key,
                extra=self._context(entry),
            )
            self.store.channel_failing(channel, exc.reason, self.clock())
            self.store.mark_failed(entry.id, error=exc.reason)
            return True
        if exc.kind == RATE_LIMITED:
            wait = max(exc.retry_after or 1.0, 1.0)
            context = log_context(channel=channel)
            log.warning("Slack rate-limits channel %s: pausing it for %.0f s", channel, wait, extra=context)
            self.store.pause_channel(channel, self.clock() + wait)
            return False
        self._retry(entry, exc)
        return exc.kind not in (SERVER, CONNECTION)  # Slack in trouble: this channel waits

    def _retry(self, entry: OutboxEntry, exc: DeliveryFailure) -> None:
        attempts = entry.attempts + 1
        # Slack in trouble is waited out however long it lasts; only refusals count to the cap.
        if exc.kind not in (SERVER, CONNECTION, AUTH, RATE_LIMITED) and attempts >= self.max_attempts:
            log.error(
                "Slack refused the %s notification %s %d times (%s); giving it up",
                entry.kind,
                entry.dedup_key,
                attempts,
                exc.reason,
                extra=self._context(entry),
            )
            self.store.mark_failed(entry.id, error=exc.reason)
            return
        wait = min(self.base_backoff * 2 ** min(attempts - 1, 30), self.max_backoff)
        wait = max(wait, exc.retry_after or 0)
        log.warning(
            "could not send the %s notification %s (attempt %d): %s; retrying in %.0f s",
            entry.kind,
            entry.dedup_key,
            attempts,
            exc.reason,
            wait,
            extra=self._context(entry),
        )
        self.store.mark_retry(entry.id, error=exc.reason, next_attempt_at=self.clock() + wait)


class _InFlight:
    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    def __enter__(self) -> None:
        with self.outbox._idle:
            self.outbox._inflight += 1

    def __exit__(self, *exc: object) -> None:
        with self.outbox._idle:
            self.outbox._inflight -= 1
            self.outbox._idle.notify_all()


class _Tally:
    def __init__(self, deadline: float | None = None) -> None:
        self.delivered = self.skipped = 0
        self.error: str | None = None
        self.deadline = deadline
        self._lock = threading.Lock()

    def out_of_time(self, wait: float = 0.0) -> bool:
        """Whether a send that would start `wait` seconds from now starts past the deadline."""
        return self.deadline is not None and time.monotonic() + wait >= self.deadline

    def add(self, *, delivered: int = 0, skipped: int = 0, error: str | None = None) -> None:
        with self._lock:
            self.delivered += delivered
            self.skipped += skipped
            if error is not None:
                self.error = error


# -- handlers: how each kind of entry is delivered -------------------------------------------------

Handler = Callable[[Outbox, OutboxEntry, str, Sender], Result]


def _thread(outbox: Outbox, entry: OutboxEntry, channel: str) -> str | None:
    if entry.task_id is None:
        return None
    return outbox.store.thread(entry.project or "", entry.task_id, entry.task_time or "", channel)


def _task(entry: OutboxEntry) -> RunningTask:
    return RunningTask(**entry.payload["task"])


def send_started(outbox: Outbox, entry: OutboxEntry, channel: str, sender: Sender) -> Result:
    message = note.started_message(_task(entry), project=entry.payload.get("project"))
    return Sent(sender.post(channel, message), thread=True)


def send_finished(outbox: Outbox, entry: OutboxEntry, channel: str, sender: Sender) -> Result:
    """A reply in the start message's thread (not echoed to the channel), else a standalone message."""
    ts = _thread(outbox, entry, channel)
    if ts:
        return Sent(sender.post(channel, note.finished_reply(_task(entry), entry.payload), thread_ts=ts))
    return Sent(sender.post(channel, note.finished_message(_task(entry), entry.payload)))


def send_edit(outbox: Outbox, entry: OutboxEntry, channel: str, sender: Sender) -> Result:
    """The start message, edited to show the outcome."""
    ts = _thread(outbox, entry, channel)
    if not ts:
        return Skipped("no start message to edit")
    sender.update(channel, ts, note.start_message_finished(_task(entry), entry.payload))
    return Sent(ts)


def send_stuck(outbox: Outbox, entry: OutboxEntry, channel: str, sender: Sender) -> Result:
    """A reply in the start message's thread that is shown in the channel too, else standalone."""
    ts = _thread(outbox, entry, channel)
    message = note.stuck_message(_task(entry), entry.payload, in_thread=bool(ts))
    if ts:
        return Sent(sender.post(channel, message, thread_ts=ts, broadcast=True))
    return Sent(sender.post(channel, message))


def send_summary(outbox: Outbox, entry: OutboxEntry, channel: str, sender: Sender) -> Result:
    return Sent(sender.post(channel, note.render_summary(entry.kind, entry.payload)))


HANDLERS: dict[str, Handler] = {
    "started": send_started,
    "finished": send_finished,
    "finished_edit": send_edit,
    "stuck": send_stuck,
    **dict.fromkeys(note.SUMMARIES, send_summary),
}
PACED = frozenset(HANDLERS) - {"finished_edit"}  # chat.update is not limited per channel
