"""`kpsbot demo`: the whole job on one machine with no accounts — simulator, watcher, terminal output."""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from kpsbot.settings import ProjectSetting, Settings
from kpsbot.simulator import Simulator, SimulatorServer
from kpsbot.slack.notifications import plain_text
from kpsbot.store import Store
from kpsbot.watch.cycle import CycleReport

log = logging.getLogger(__name__)

DEMO_PROJECTS = ("cn-north-4", "ap-southeast-1")  # two regions' default projects, IDs looked up in IAM
POLL_SECONDS = 2.0


class DemoError(Exception):
    """Something the person running the demo must fix; `exit_code` follows SPEC §3."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class DemoOptions:
    duration: float | None = None  # seconds; None: until Ctrl-C (or `cycles`)
    cycles: int | None = None
    db_path: str | None = None
    show_blocks: bool = False
    poll_seconds: float = POLL_SECONDS
    seed: int | None = None


def simulated_projects(seed: int | None) -> tuple[list[Simulator], str, str]:
    """A simulated account with a project in each of two regions, whose tasks start and finish
    within seconds, signing with throw-away AK/SK."""
    ak, sk = f"DEMO{secrets.token_hex(8).upper()}", secrets.token_urlsafe(24)
    sims = [
        Simulator(
            name=name,
            ak=ak,
            sk=sk,
            tasks=2 if n == 0 else 1,
            seed=None if seed is None else f"{seed}:{name}",
            rate=0.25 if n == 0 else 0.15,
            finish_after=(3.0, 12.0),
            fail_ratio=0.25,
        )
        for n, name in enumerate(DEMO_PROJECTS)
    ]
    return sims, ak, sk


class Demo:
    """Runs the simulator, the watcher loop against it and (optionally) the Slack side; prints as it goes."""

    def __init__(self, settings: Settings, options: DemoOptions, out: IO[str]) -> None:
        self.settings = settings
        self.options = options
        self.out = out
        self.stop = threading.Event()

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def run(self) -> int:
        options = self.options
        sims, ak, sk = simulated_projects(options.seed)
        with SimulatorServer(sims) as server, ExitStack() as stack:
            if options.db_path:
                db_path = options.db_path
            else:
                tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="kpsbot-demo-"))
                db_path = str(Path(tmp) / "kpsbot-demo.db")
            # The rest of kpsbot sees an ordinary configuration that points at the simulator: one
            # server stands in for both regions' KPS and IAM endpoints.
            settings = replace(
                self.settings,
                projects=tuple(ProjectSetting(name=name, region=name, id=None) for name in DEMO_PROJECTS),
                endpoint_template=f"{server.url}/{{region}}",
                iam_endpoint_template=f"{server.url}/{{region}}",
                ak=ak,
                sk=sk,
                security_token=None,
                auth_token=None,
                db_path=db_path,
                poll_seconds=max(int(options.poll_seconds), 1),
            )
            try:
                store = Store(db_path)
            except (OSError, sqlite3.Error, RuntimeError) as exc:
                raise DemoError(f"cannot open --db {db_path}: {exc}", 2) from None
            try:
                return self._run(settings, store, server.url)
            finally:
                store.close()

    def _run(self, settings: Settings, store: Store, url: str) -> int:
        from kpsbot.cli import Cloud, ProjectCatalog, build_watcher
        from kpsbot.services import run_services
        from kpsbot.slack.server import slack_start_errors
        from kpsbot.watch.console import ConsoleSender
        from kpsbot.watch.loop import WatcherLoop

        options = self.options
        cloud = Cloud(settings, timeout=(2.0, 5.0))
        directory = cloud.directory(store)
        projects = directory.resolve(strict=True)
        console = ConsoleSender(self.out, show_blocks=options.show_blocks)
        watcher = build_watcher(settings, store, cloud, directory, console=console)
        bound = []
        if options.duration:
            bound.append(f"for {options.duration:g} s")
        if options.cycles:
            bound.append(f"for {options.cycles} polls")
        found = "\n".join(f"  {p.name}: project ID {p.id} (from {p.source})" for p in projects)
        self.say(
            f"kpsbot demo: a KPS and IAM simulator at {url} for two regions, SQLite at {settings.db_path}\n"
            f"Project IDs looked up in IAM by name, as the official SDK does:\n{found}\n"
            f"Polling every {options.poll_seconds:g} s {' or '.join(bound) or 'until Ctrl-C'}; "
            f"tasks start and finish on their own.\n"
        )
        if settings.slack_bot_token and settings.channel:
            self.say(f"Notifications are also posted to Slack channel {settings.channel}.\n")
        catalog = ProjectCatalog(settings, directory, cloud)
        slack = self._slack_services(settings, catalog, store)
        self._print_first_page(catalog, settings)
        self.say("Notifications, as they would read in Slack:\n")

        def said(report: CycleReport) -> None:
            self.say(f"   · poll {loop.cycles}: {report.summary()}")

        loop = WatcherLoop(
            watcher,
            store,
            interval=options.poll_seconds,
            jitter=0.0,
            max_cycles=options.cycles,
            on_cycle=said,
        )
        deadline = time.monotonic() + options.duration if options.duration else None

        def tick() -> None:
            if loop.done.is_set() or (deadline is not None and time.monotonic() >= deadline):
                self.stop.set()

        with slack_start_errors(settings.slack_api_url, f"127.0.0.1:{settings.port}"):
            run_services([*slack, loop], stop=self.stop, tick=tick, tick_seconds=0.1)
        events = store.events()
        started = sum(1 for e in events if e["kind"] == "started")
        finished = sum(1 for e in events if e["kind"] == "finished")
        self.say(
            f"\nDemo over after {loop.cycles} polls: {started} task starts and {finished} finishes recorded."
        )
        return 0

    def _print_first_page(self, catalog: Any, settings: Settings) -> None:
        from kpsbot.kps.client import KpsError
        from kpsbot.slack.query import parse_command
        from kpsbot.slack.replies import TaskReplies

        replies = TaskReplies(catalog, page_size=settings.page_size, stuck_minutes=settings.stuck_minutes)
        try:
            page = replies.page(parse_command(""), 0, clamp=True)
        except KpsError as exc:
            self.say(f"/kps-tasks failed: {exc}")
            return
        self.say("What /kps-tasks shows in Slack (first page):\n")
        self.say("\n".join("   " + line for line in plain_text(page).splitlines()))
        if self.options.show_blocks:
            self.say(json.dumps(page["blocks"], indent=2, ensure_ascii=False))
        self.say("")

    def _slack_services(self, settings: Settings, catalog: Any, store: Store) -> list:
        """Serve /kps-tasks against the simulator when a Slack app is configured."""
        if not settings.slack_configured:
            return []
        from kpsbot.cli import build_slack_app
        from kpsbot.slack.server import slack_services, slack_start_errors
        from kpsbot.slack.workers import WorkerPool

        work = WorkerPool()
        with slack_start_errors(settings.slack_api_url, f"127.0.0.1:{settings.port}"):
            app = build_slack_app(settings, catalog, store, work)
        mode = "Socket Mode" if settings.socket_mode else f"HTTP on port {settings.port}"
        self.say(f"Serving /kps-tasks against the simulator ({mode}).\n")
        return [
            work,
            *slack_services(
                app,
                app_token=settings.slack_app_token,
                signing_secret=settings.slack_signing_secret,
                port=settings.port,
                port_set=settings.port_set,
                health=lambda: {"status": "ok", "demo": True},
                host="127.0.0.1",
            ),
        ]


def run_demo(settings: Settings, options: DemoOptions, out: IO[str]) -> int:
    """Run until Ctrl-C / SIGTERM or the given bound; 0 on a normal end."""
    return Demo(settings, options, out).run()
