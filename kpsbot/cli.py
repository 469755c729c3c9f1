"""Command line and composition root: thin click commands that build every object from the settings
and print results."""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, NoReturn

import click
import orjson

from kpsbot import __version__
from kpsbot.settings import (
    Settings,
    SettingsError,
    log_format_from,
    missing_half,
    read_environment,
    settings_from,
)

if TYPE_CHECKING:
    import requests
    from slack_bolt import App

    from kpsbot.kps.client import KpsClient
    from kpsbot.kps.iam import IamClient
    from kpsbot.kps.listing import Source
    from kpsbot.metrics import Metrics
    from kpsbot.projects import Project, ProjectDirectory
    from kpsbot.store import Store
    from kpsbot.watch.console import ConsoleSender
    from kpsbot.watch.cycle import Watcher
    from kpsbot.watch.loop import WatcherLoop
    from kpsbot.watch.plan import Route

EXIT_FAILED = 1  # the API or Slack failed
EXIT_USAGE = 2  # usage or settings
MAX_IN_FLIGHT = 8  # KPS and IAM requests in flight at once, over every project (API Gateway throttles)

log = logging.getLogger("kpsbot")


def fail(message: str, code: int) -> NoReturn:
    from kpsbot.logs import emit_failure

    emit_failure(message, code)
    sys.exit(code)


class Context:
    """Loads settings once per process; commands ask only for what they need."""

    def __init__(self) -> None:
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            env = read_environment()
            try:
                self._settings = settings_from(env)
            except SettingsError as exc:
                _setup_failure_logging(env)
                fail(str(exc), EXIT_USAGE)
            setup_logging(self._settings)
        return self._settings

    def require(self, *checks: str) -> Settings:
        settings = self.settings
        try:
            for check in checks:
                getattr(settings, f"require_{check}")()
        except SettingsError as exc:
            fail(str(exc), EXIT_USAGE)
        return settings


def setup_logging(settings: Settings, *, level: str | None = None) -> None:
    from kpsbot.logs import setup_logging as setup
    from kpsbot.settings import SECRETS

    setup(level or settings.log_level, [getattr(settings, name) for name in SECRETS], settings.log_format)


def quiet_logging(settings: Settings) -> None:
    """One-shot commands print their result and, on failure, one line: log records only when
    something is wrong (or at DEBUG), and no urllib3 retry chatter before the reason."""
    debug = settings.log_level == "DEBUG"
    setup_logging(settings, level="DEBUG" if debug else "WARNING")
    if not debug:
        logging.getLogger("urllib3").setLevel(logging.ERROR)


def _setup_failure_logging(env: dict[str, str]) -> None:
    """A settings error is written in KPSBOT_LOG_FORMAT too, unless that setting is the malformed one."""
    from kpsbot.logs import setup_logging as setup

    try:
        setup("ERROR", [], log_format_from(env))
    except SettingsError:
        pass


pass_context = click.make_pass_decorator(Context, ensure=True)


# -- building the objects ----------------------------------------------------------------------


class Cloud:
    """This process's Huawei Cloud clients: one pooled session with the credentials, one limit on
    requests in flight, a KPS client per project and an IAM client per region."""

    def __init__(
        self,
        settings: Settings,
        *,
        timeout: tuple[float, float] = (5.0, 15.0),
        observe: Callable[[str, int | None], None] | None = None,
        retries: int = 3,
    ) -> None:
        from kpsbot.kps.auth import AkSkAuth, TokenAuth
        from kpsbot.kps.client import build_session

        self.settings = settings
        self.timeout = timeout
        self.observe = observe
        self.session: requests.Session = build_session(retries=retries, backoff=0.5 if retries else 0)
        if settings.auth_kind == "aksk":
            self.session.auth = AkSkAuth(settings.ak or "", settings.sk or "", None, settings.security_token)
        else:
            self.session.auth = TokenAuth(settings.auth_token or "")
        self.limiter = threading.BoundedSemaphore(MAX_IN_FLIGHT)
        self._clients: dict[str, KpsClient] = {}

    def kps(self, project: Project) -> KpsClient:
        from kpsbot.kps.client import KpsClient

        client = self._clients.get(project.id)
        if client is None:
            setting = self.settings.project(project.name)
            endpoint = setting.endpoint(self.settings.endpoint_template) if setting else ""
            client = KpsClient(
                endpoint,
                project.id,
                session=self.session,
                timeout=self.timeout,
                limiter=self.limiter,
                observe=self.observe,
            )
            self._clients[project.id] = client
        return client

    def iam(self, region: str) -> IamClient:
        from kpsbot.kps.iam import IamClient

        endpoint = self.settings.iam_endpoint_template.replace("{region}", region)
        return IamClient(
            endpoint, session=self.session, timeout=self.timeout, limiter=self.limiter, observe=self.observe
        )

    def directory(self, store: Store | None) -> ProjectDirectory:
        from kpsbot.projects import ProjectDirectory

        return ProjectDirectory(self.settings.projects, store=store, iam=self.iam)


class ProjectCatalog:
    """The configured projects as the Slack side sees them (kpsbot.slack.replies.Catalog)."""

    def __init__(self, settings: Settings, directory: ProjectDirectory, cloud: Cloud) -> None:
        self.settings = settings
        self.directory = directory
        self.cloud = cloud

    def names(self) -> list[str]:
        return [p.name for p in self.settings.projects]

    def sources(self) -> list[Source]:
        from kpsbot.kps.listing import Source

        return [Source(p.name, self.cloud.kps(p)) for p in self.directory.refresh()]

    def unresolved(self) -> dict[str, str]:
        return self.directory.unresolved()

    def location(self, name: str) -> str:
        project = self.directory.by_name(name)
        if project is None:
            return ""
        return project.location or _host(self.cloud, project)


def resolve_projects(directory: ProjectDirectory) -> list[Project]:
    """Every configured project's ID, for a one-shot command: exit 2 for a name IAM does not know,
    exit 1 when IAM cannot be reached."""
    from kpsbot.kps.client import KpsError
    from kpsbot.kps.iam import ProjectNotFound

    try:
        return directory.resolve(strict=True)
    except ProjectNotFound as exc:
        fail(str(exc), EXIT_USAGE)
    except KpsError as exc:
        fail(f"cannot look up project IDs in IAM: {exc}", EXIT_FAILED)


def open_store(settings: Settings, *, create: bool = True) -> Store | None:
    """The SQLite store at KPSBOT_DB; a file that cannot be opened is a settings problem (exit 2).
    With `create=False` a missing file is None (commands that only read IDs kept there)."""
    import os
    import sqlite3

    from kpsbot.store import Store

    if not create and not os.path.exists(settings.db_path):
        return None
    try:
        store = Store(settings.db_path)
    except (OSError, sqlite3.Error, RuntimeError) as exc:
        fail(f"cannot open KPSBOT_DB {settings.db_path}: {exc}", EXIT_USAGE)
    if len(settings.projects) == 1 and settings.projects[0].id:
        store.adopt_legacy(settings.projects[0].id)
    return store


def build_watcher(
    settings: Settings,
    store: Store,
    cloud: Cloud,
    directory: ProjectDirectory,
    *,
    console: ConsoleSender | None = None,
    clock: Callable[[], float] | None = None,
    metrics: Metrics | None = None,
) -> Watcher:
    """The watcher over every resolved project, posting to Slack (KPSBOT_CHANNEL and subscriptions)
    when a bot token is set, and to `console` when given."""
    import time

    from kpsbot.slack.sender import SlackSender
    from kpsbot.watch.cycle import WatchedProject, Watcher
    from kpsbot.watch.outbox import CONSOLE, Outbox, Pacer, Sender
    from kpsbot.watch.plan import ProjectInfo

    senders: dict[str, Sender] = {}
    if settings.slack_bot_token:
        senders["*"] = SlackSender.from_token(settings.slack_bot_token, base_url=settings.slack_api_url)
    if console is not None:
        senders[CONSOLE] = console
    now = clock or time.time
    outbox = None
    if senders:
        pacer = Pacer(settings.pace_seconds)
        outbox = Outbox(
            store, senders, fixed_channel=settings.channel, clock=now, pacer=pacer, metrics=metrics
        )

    def projects() -> list[WatchedProject]:
        named = directory.several
        return [
            WatchedProject(ProjectInfo(p.id, p.name, p.location or _host(cloud, p), named), cloud.kps(p))
            for p in directory.refresh()
        ]

    return Watcher(
        projects,
        store,
        outbox,
        routes=routes_for(settings, store, console=console is not None),
        burst=settings.burst,
        outage_polls=settings.outage_polls,
        stuck_minutes=settings.stuck_minutes,
        retention_days=settings.retention_days,
        clock=now,
        on_poll=(lambda r: metrics.poll(r.project, r.ok, r.duration_s, r.tasks)) if metrics else None,
    )


def _host(cloud: Cloud, project: Project) -> str:
    return cloud.kps(project).endpoint.split("://")[-1]


def routes_for(settings: Settings, store: Store, *, console: bool) -> Callable[[], Sequence[Route]]:
    """Where notifications go: KPSBOT_CHANNEL (everything), the channels' subscriptions (read again
    every poll, so one made in another process counts from the next), the terminal when it is one."""
    from kpsbot.watch.outbox import CONSOLE
    from kpsbot.watch.plan import Route

    fixed = []
    if settings.channel and settings.slack_bot_token:
        fixed.append(Route(settings.channel))
    if console:
        fixed.append(Route(CONSOLE))

    def routes() -> Sequence[Route]:
        if not settings.slack_bot_token:
            return fixed
        subscribed = [
            Route(s.channel, s.projects, s.actions, s.failures_only, s.text.lower(), s.created_at)
            for s in store.subscriptions()
        ]
        return fixed + subscribed

    return routes


def watcher_loop(watcher: Watcher, store: Store, settings: Settings, **options: Any) -> WatcherLoop:
    from kpsbot.watch.loop import WatcherLoop

    return WatcherLoop(watcher, store, interval=settings.poll_seconds, **options)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kpsbot")
def cli() -> None:
    """kpsbot: Huawei Cloud KPS key-pair tasks in Slack.

    Settings come from the environment and a .env file in the working directory
    (see .env.example).
    """


# -- kpsbot tasks / projects ----------------------------------------------------------------------


@cli.command()
@click.option("--project", "project_name", default=None, help="Only this project (a name from KPS_PROJECTS).")
@click.option(
    "--limit",
    type=click.IntRange(1, 1000),
    default=None,
    help="Rows to fetch (1-1000; default: the page size, KPSBOT_PAGE_SIZE).",
)
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True, help="Rows to skip.")
@click.option("--all", "fetch_all", is_flag=True, help="Fetch every page (ignores --limit/--offset).")
@click.option(
    "--json", "as_json", is_flag=True, help='Print {"total": N, "tasks": [...]} with the API\'s field names.'
)
@pass_context
def tasks(
    ctx: Context, project_name: str | None, limit: int | None, offset: int, fetch_all: bool, as_json: bool
) -> None:
    """Print the key-pair tasks running now, in every configured project (or one)."""
    from kpsbot.kps.listing import Source, list_all, list_page
    from kpsbot.logs import emit_failure
    from kpsbot.tables import render_task_table

    settings = ctx.require("kps")
    quiet_logging(settings)
    if project_name is not None and settings.project(project_name) is None:
        names = ", ".join(p.name for p in settings.projects)
        fail(f"--project {project_name!r} is not a configured project ({names})", EXIT_USAGE)
    cloud = Cloud(settings)
    store = open_store(settings, create=False)
    try:
        projects = resolve_projects(cloud.directory(store))
    finally:
        if store is not None:
            store.close()
    sources = [Source(p.name, cloud.kps(p)) for p in projects if project_name in (None, p.name)]
    if fetch_all and as_json:
        errors = print_all_json(sources, sys.stdout.buffer)
        for name, error in errors.items():
            emit_failure(f"project {name}: {error}", EXIT_FAILED)
        sys.exit(EXIT_FAILED if errors else 0)
    if fetch_all:
        listing = list_all(sources)
    else:
        listing = list_page(sources, limit=limit or settings.page_size, offset=offset)
    if as_json:
        rows = [
            {**row.task.to_api(), "project": row.project, "project_id": row.project_id}
            for row in listing.tasks
        ]
        click.echo(orjson.dumps({"total": listing.total, "tasks": rows}).decode())
    else:
        click.echo(
            render_task_table(
                listing.tasks,
                listing.total,
                0 if fetch_all else offset,
                now=datetime.now(timezone.utc),
                projects=len(sources) > 1,
            )
        )
    for name, error in listing.errors.items():
        emit_failure(f"project {name}: {error}", EXIT_FAILED)
    if listing.errors:
        sys.exit(EXIT_FAILED)


def print_all_json(sources: Sequence[Source], out: Any) -> dict[str, Any]:
    """`{"total": N, "tasks": [...]}` of every project's running tasks, each page serialised as it
    arrives (no task objects, nothing but the output held): 100,000 tasks in a fraction of the
    memory and time of building them first. A project that fails is left out; its error returned."""
    from kpsbot.kps.client import KpsError

    chunks: list[bytes] = []
    total = 0
    errors: dict[str, Any] = {}
    for source in sources:
        mine: list[bytes] = []
        count = 0
        extra = {"project": source.name, "project_id": source.kps.project_id}
        try:
            for page in source.kps.running_task_pages():
                for row in page:
                    row.update(extra)
                if page:
                    mine.append(orjson.dumps(page)[1:-1])
                    count += len(page)
        except KpsError as exc:
            errors[source.name] = exc
            continue
        chunks += mine
        total += count
    out.write(b'{"total":%d,"tasks":[%b]}\n' % (total, b",".join(chunks)))
    out.flush()
    return errors


@cli.command()
@click.option(
    "--json", "as_json", is_flag=True, help='Print {"projects": [{"name", "region", "id", "source"}]}.'
)
@pass_context
def projects(ctx: Context, as_json: bool) -> None:
    """The configured projects: name, region, ID and where the ID came from (setting, iam, database)."""
    settings = ctx.require("kps")
    quiet_logging(settings)
    cloud = Cloud(settings)
    store = open_store(settings, create=False)
    try:
        found = resolve_projects(cloud.directory(store))
    finally:
        if store is not None:
            store.close()
    rows = [{"name": p.name, "region": p.region, "id": p.id, "source": p.source} for p in found]
    if as_json:
        click.echo(json.dumps({"projects": rows}))
        return
    from kpsbot.tables import render_rows

    click.echo(render_rows(("NAME", "REGION", "ID", "SOURCE"), [tuple(r[k] or "-" for k in r) for r in rows]))


# -- kpsbot watch ------------------------------------------------------------------


@cli.command(short_help="Poll KPS; post task starts and finishes.")
@click.option(
    "--once",
    is_flag=True,
    help="Run one poll cycle, print a one-line summary and exit (1 when the poll failed).",
)
@pass_context
def watch(ctx: Context, once: bool) -> None:
    """Poll KPS, store task starts and finishes, and post them to KPSBOT_CHANNEL.

    Without KPSBOT_CHANNEL the notifications are printed here instead. Without
    --once it polls every KPSBOT_POLL_SECONDS until Ctrl-C.
    """
    from kpsbot.kps.iam import ProjectNotFound
    from kpsbot.watch.console import ConsoleSender

    settings = ctx.require("kps", "channel")
    cloud = Cloud(settings)
    store = open_store(settings)
    assert store is not None
    try:
        directory = cloud.directory(store)
        console = None if settings.channel else ConsoleSender(sys.stdout)
        if once:
            resolve_projects(directory)
            watch_once(build_watcher(settings, store, cloud, directory, console=console), store, settings)
            return
        try:
            directory.resolve()  # IAM unreachable: watch what is known, and retry the rest
        except ProjectNotFound as exc:
            fail(str(exc), EXIT_USAGE)
        watcher = build_watcher(settings, store, cloud, directory, console=console)
        run_watcher_alone(watcher, store, settings)
    finally:
        store.close()


def watch_once(watcher: Watcher, store: Store, settings: Settings) -> None:
    from kpsbot.watch.loop import Lease

    # The same lease as `kpsbot run`'s watcher: a one-off cycle never posts beside a running bot.
    lease = Lease(store, ttl=3 * settings.poll_seconds + 5)
    if not lease.acquire():
        fail(
            f"another kpsbot ({store.lease_holder()}) is watching {settings.db_path}: stop it, or use "
            "another KPSBOT_DB",
            EXIT_FAILED,
        )
    try:
        failed_before = store.failed_deliveries()
        report = watcher.run_cycle(may_send=lease.valid)
    finally:
        lease.release()
    click.echo(report.summary())
    if report.failed_deliveries > failed_before:
        fail(f"Slack refused a notification: {store.last_delivery_error()}", EXIT_FAILED)
    if report.delivery_error:
        fail(f"Slack failed: {report.delivery_error} (the notification stays queued)", EXIT_FAILED)
    if not report.ok:
        sys.exit(EXIT_FAILED)


def run_watcher_alone(watcher: Watcher, store: Store, settings: Settings) -> None:
    """The watcher loop in the foreground until SIGINT/SIGTERM, stopped within the same budget as
    `kpsbot run`; the lease is released on the way out."""
    from kpsbot.services import run_services

    names = ", ".join(p.name for p in settings.projects)

    def ready() -> None:
        log.info("watching %s every %d s (Ctrl-C stops)", names, settings.poll_seconds)

    run_services([watcher_loop(watcher, store, settings)], ready=ready)


# -- kpsbot simulate ---------------------------------------------------------------


@cli.command(short_help="Run a local KPS (and IAM) simulator.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8443,
    show_default=True,
    help="Port to listen on (0 picks a free one).",
)
@click.option(
    "--tasks",
    "task_count",
    type=click.IntRange(min=0),
    default=25,
    show_default=True,
    help="Tasks running at start, in each project.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=0.2,
    show_default=True,
    help="New tasks started per second, in each project (0: a static snapshot).",
)
@click.option(
    "--seed",
    type=int,
    default=None,
    help="Random seed, for reproducible runs (each project derives its own).",
)
@click.option(
    "--project",
    "project_specs",
    multiple=True,
    metavar="NAME[:ID]",
    help="A project to serve, e.g. cn-north-4_dev or ap-southeast-1:0a1b (repeatable; default: settings).",
)
@click.option("--project-id", default=None, help="Serve one project with this ID, named by it.")
@click.option("--ak", default=None, help="AK to accept (default: CLOUD_SDK_AK).")
@click.option("--sk", default=None, help="SK to accept (default: CLOUD_SDK_SK).")
@click.option("--token", default=None, help="IAM token to accept (default: KPS_AUTH_TOKEN).")
@pass_context
def simulate(
    ctx: Context, host, port, task_count, rate, seed, project_specs, project_id, ak, sk, token
) -> None:
    """Run a local KPS API simulator (signature checks included) that also answers IAM's project
    look-up (GET /v3/projects?name=), so a client configured from the same .env talks to it.

    It serves the projects of the settings (KPS_PROJECTS, or KPS_REGION / KPS_PROJECT_ID) and
    accepts their credentials (CLOUD_SDK_AK / CLOUD_SDK_SK, KPS_AUTH_TOKEN); options win over
    settings. A project given by name only gets an ID of its own, the same on every run. With no
    project configured at all, it serves one project named cn-north-4. The start-up line lists the
    projects and the KPS_ENDPOINT and KPS_IAM_ENDPOINT to set.
    """
    from kpsbot.settings import ProjectSetting
    from kpsbot.simulator import Simulator, serve

    settings = ctx.settings
    if project_specs and project_id:
        fail("--project and --project-id both name projects: use --project NAME:ID alone", EXIT_USAGE)
    projects: list[ProjectSetting] = []
    for spec in project_specs:
        name, sep, spec_id = (part.strip() for part in spec.partition(":"))
        if not name or (sep and not spec_id):
            fail(f"--project {spec!r} is not NAME or NAME:ID, e.g. --project cn-north-4_dev", EXIT_USAGE)
        projects.append(ProjectSetting(name=name, region=None, id=spec_id or None))
    if project_id:
        projects = [ProjectSetting(name=project_id, region=None, id=project_id)]
    projects = projects or list(settings.projects) or [ProjectSetting("cn-north-4", "cn-north-4", None)]
    ak, sk = ak or settings.ak, sk or settings.sk
    missing = missing_half(ak, sk)
    if missing:
        option = "--sk" if missing == "CLOUD_SDK_SK" else "--ak"
        fail(
            f"{missing} (or {option}) is not set: the simulator checks signatures with both AK and SK",
            EXIT_USAGE,
        )
    sims = [
        Simulator(
            project_id=project.id,
            name=project.name,
            region=project.region,
            ak=ak,
            sk=sk,
            token=token or settings.auth_token,
            tasks=task_count,
            seed=seed if seed is None or len(projects) == 1 else f"{seed}:{project.name}",
            rate=rate,
        )
        for project in projects
    ]
    try:
        serve(host, port, sims)
    except ValueError as exc:  # e.g. two projects with one ID
        fail(f"cannot simulate these projects: {exc}", EXIT_USAGE)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", EXIT_USAGE)


# -- kpsbot run --------------------------------------------------------------------


@cli.command(short_help="Run the bot: the Slack app plus the watcher.")
@click.option(
    "--host",
    default="0.0.0.0",
    show_default=True,
    help="Address for the HTTP server (HTTP mode, or /healthz and /metrics in Socket Mode when PORT is set).",
)
@pass_context
def run(ctx: Context, host: str) -> None:
    """Run the bot: Socket Mode if SLACK_APP_TOKEN is set, else HTTP on PORT; stops on SIGTERM/SIGINT."""
    from kpsbot.kps.iam import ProjectNotFound
    from kpsbot.metrics import Metrics
    from kpsbot.services import HttpService, run_services
    from kpsbot.slack.server import SlackStartError, make_wsgi_app, slack_services, slack_start_errors
    from kpsbot.slack.workers import WorkerPool
    from kpsbot.status import health_report, home_status

    settings = ctx.require("kps", "channel")
    slack_wanted = bool(settings.slack_bot_token or settings.slack_app_token or settings.slack_signing_secret)
    if slack_wanted:
        ctx.require("slack")
    store = open_store(settings)
    assert store is not None
    loop: WatcherLoop | None = None
    metrics = Metrics(
        [p.name for p in settings.projects],
        outbox=lambda: (store.pending_deliveries(), store.oldest_pending()),
        leader=lambda: loop is not None and loop.is_leader,
    )
    cloud = Cloud(settings, observe=metrics.kps_request)
    try:
        directory = cloud.directory(store)
        try:
            directory.resolve()  # IAM unreachable: serve anyway, and retry (see /healthz)
        except ProjectNotFound as exc:
            fail(str(exc), EXIT_USAGE)
        loop = watcher_loop(
            build_watcher(settings, store, cloud, directory, metrics=metrics), store, settings
        )
        mode = "socket" if settings.socket_mode else "http" if slack_wanted else "watcher"

        def health() -> dict:
            return health_report(
                version=__version__,
                mode=mode,
                leader=loop is not None and loop.is_leader,
                configured=settings.projects,
                directory=directory,
                store=store,
            )

        if not slack_wanted:
            log.warning(
                "Slack settings are not present (SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET or "
                "SLACK_APP_TOKEN): running the watcher only, /kps-tasks is not served"
            )
            services: list[Any] = [loop]
            if settings.port_set:  # /healthz and /metrics for probes and scrapes
                services.append(
                    HttpService(make_wsgi_app(None, health, metrics=metrics.exposition), host, settings.port)
                )
            run_services(services)
            return
        if not settings.channel:
            log.info("KPSBOT_CHANNEL is not set: only channels' subscriptions get notifications")
        work = WorkerPool()

        def home() -> Any:
            return home_status(
                version=__version__,
                watcher="leader" if loop is not None and loop.is_leader else "standby",
                stuck_minutes=settings.stuck_minutes,
                configured=settings.projects,
                directory=directory,
                store=store,
                fixed_channel=settings.channel,
            )

        try:
            with slack_start_errors(settings.slack_api_url, f"{host}:{settings.port}"):
                app = build_slack_app(
                    settings,
                    ProjectCatalog(settings, directory, cloud),
                    store,
                    work,
                    home=home,
                    metrics=metrics,
                )
                http = slack_services(
                    app,
                    app_token=settings.slack_app_token,
                    signing_secret=settings.slack_signing_secret,
                    port=settings.port,
                    port_set=settings.port_set,
                    health=health,
                    metrics=metrics.exposition,
                    host=host,
                )
                run_services([work, loop, *http])
        except SlackStartError as exc:
            fail(str(exc), exc.exit_code)
    finally:
        store.close()


def build_slack_app(
    settings: Settings,
    catalog: ProjectCatalog,
    store: Store | None,
    work: Any,
    *,
    home: Callable[[], Any] | None = None,
    metrics: Metrics | None = None,
) -> App:
    """The Bolt app with its dependencies: replies from KPS, subscriptions in the store (posting
    their confirmations through the notification sender), the allow-lists."""
    from slack_sdk import WebClient

    from kpsbot.slack.access import AccessPolicy
    from kpsbot.slack.app import build_app
    from kpsbot.slack.replies import TaskReplies
    from kpsbot.slack.sender import SlackSender
    from kpsbot.slack.subscriptions import SubscriptionCommands

    client = WebClient(base_url=settings.slack_api_url, token=settings.slack_bot_token)
    subscriptions = None
    if store is not None:
        sender = SlackSender.from_token(settings.slack_bot_token or "", base_url=settings.slack_api_url)
        subscriptions = SubscriptionCommands(
            store, sender.post, fixed_channel=settings.channel, admins=settings.admin_users
        )
    return build_app(
        client=client,
        signing_secret=settings.slack_signing_secret,
        replies=TaskReplies(catalog, page_size=settings.page_size, stuck_minutes=settings.stuck_minutes),
        access=AccessPolicy(channels=settings.allowed_channels, users=settings.allowed_users),
        work=work,
        subscriptions=subscriptions,
        home=home,
        metrics=metrics,
    )


# -- kpsbot demo --------------------------------------------------------------------


@cli.command(short_help="The whole job locally, no accounts needed.")
@click.option("--duration", type=click.FloatRange(min=1), default=None, help="Stop after S seconds.")
@click.option("--cycles", type=click.IntRange(min=1), default=None, help="Stop after N polls.")
@click.option("--db", "db_path", default=None, help="SQLite file to use (default: a temporary one).")
@click.option("--blocks", "show_blocks", is_flag=True, help="Also print each message's Block Kit JSON.")
@click.option("--seed", type=int, default=None, help="Random seed for the simulated tasks.")
@pass_context
def demo(ctx: Context, duration, cycles, db_path, show_blocks, seed) -> None:  # noqa: ANN001
    """The whole job on this machine, no accounts needed: a KPS simulator, the watcher and the
    notifications printed here (also posted to Slack when SLACK_BOT_TOKEN and KPSBOT_CHANNEL are
    set; /kps-tasks served when SLACK_SIGNING_SECRET or SLACK_APP_TOKEN is set too).

    Runs until Ctrl-C, or the --duration / --cycles bound.
    """
    from kpsbot.demo import DemoError, DemoOptions, run_demo
    from kpsbot.slack.server import SlackStartError

    settings = ctx.require("channel")
    quiet_logging(settings)  # the transcript is the demo's own output
    options = DemoOptions(
        duration=duration, cycles=cycles, db_path=db_path, show_blocks=show_blocks, seed=seed
    )
    try:
        sys.exit(run_demo(settings, options, sys.stdout))
    except (DemoError, SlackStartError) as exc:
        fail(str(exc), exc.exit_code)


def main() -> None:
    cli(prog_name="kpsbot")


if __name__ == "__main__":
    main()
