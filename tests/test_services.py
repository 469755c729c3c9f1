"""Services: the HTTP server stops cleanly under load, and run_services stops everything in time."""

from __future__ import annotations

import signal
import socket
import threading
import time

import pytest
import requests

from kpsbot.services import HttpService, run_services


def slow_app(environ, start_response):
    time.sleep(0.02)
    body = b'{"ok": true}'
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def refused(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_stopping_while_requests_are_in_flight_never_raises():
    """Stopping with kept-alive connections and requests mid-answer: the race that failed CI with
    `OSError: [Errno 9] Bad file descriptor` when the server's sockets were closed under its loop."""
    errors: list[BaseException] = []
    for _ in range(60):
        http = HttpService(slow_app, "127.0.0.1", 0)
        http.start()
        sessions = [requests.Session() for _ in range(6)]
        halt = threading.Event()

        def hammer(session: requests.Session, port: int = http.port, halt: threading.Event = halt) -> None:
            while not halt.is_set():
                try:
                    session.get(f"http://127.0.0.1:{port}/", timeout=2)
                except requests.RequestException:
                    return  # the server went away: expected once it stops

        threads = [threading.Thread(target=hammer, args=(s,)) for s in sessions]
        for thread in threads:
            thread.start()
        time.sleep(0.05)
        started = time.monotonic()
        try:
            http.stop(2)
        except BaseException as exc:  # noqa: BLE001 - the point of the test
            errors.append(exc)
        took = time.monotonic() - started
        halt.set()
        for thread in threads:
            thread.join(5)
        for session in sessions:
            session.close()
        assert took < 3, f"stop took {took:.1f} s"
        assert refused(http.port)
    assert errors == []


def test_a_port_in_use_fails_in_start():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            HttpService(slow_app, "127.0.0.1", taken.getsockname()[1]).start()


class Recorder:
    def __init__(self, name: str, log: list[str], *, fail_stop: bool = False) -> None:
        self.name, self.log, self.fail_stop = name, log, fail_stop

    def start(self) -> None:
        self.log.append(f"start {self.name}")

    def stop(self, timeout: float) -> None:
        self.log.append(f"stop {self.name}")
        if self.fail_stop:
            raise RuntimeError("boom")


def test_run_services_starts_in_order_and_stops_in_reverse_even_when_one_fails():
    log: list[str] = []
    stop = threading.Event()
    ticks = []

    def tick() -> None:
        ticks.append(1)
        if len(ticks) == 3:
            stop.set()

    run_services(
        [Recorder("a", log), Recorder("b", log, fail_stop=True), Recorder("c", log)],
        stop=stop,
        tick=tick,
        tick_seconds=0.01,
    )
    assert log == ["start a", "start b", "start c", "stop c", "stop b", "stop a"]
    assert len(ticks) == 3


def test_ready_runs_once_every_service_started_and_sigterm_is_handled():
    # What announces the process (the simulator's start-up line) comes after the handlers, so a
    # SIGTERM sent on seeing it is a clean stop, never the default action (exit -15).
    log: list[str] = []
    before = signal.getsignal(signal.SIGTERM)

    def ready() -> None:
        log.append("ready")
        assert signal.getsignal(signal.SIGTERM) is not before
        signal.raise_signal(signal.SIGTERM)  # at once, as a test that saw the line may

    run_services([Recorder("a", log), Recorder("b", log)], tick_seconds=0.05, ready=ready)
    assert log == ["start a", "start b", "ready", "stop b", "stop a"]
    assert signal.getsignal(signal.SIGTERM) is before


def test_run_services_stops_on_sigterm_and_restores_the_handler():
    log: list[str] = []
    before = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(0.2, lambda: signal.raise_signal(signal.SIGTERM))
    timer.start()
    run_services([Recorder("a", log)], tick_seconds=0.05)
    timer.join()
    assert log == ["start a", "stop a"]
    assert signal.getsignal(signal.SIGTERM) is before
