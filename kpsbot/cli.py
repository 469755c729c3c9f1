"""Command line: thin click commands that build objects from settings and print results."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

import click

from kpsbot import __version__
from kpsbot.settings import Settings, SettingsError, load_settings

EXIT_FAILED = 1  # the API or Slack failed
EXIT_USAGE = 2  # usage or settings

log = logging.getLogger("kpsbot")


def setup_logging(settings: Settings) -> None:
    from kpsbot.logs import setup_logging as setup
    from kpsbot.settings import SECRETS

    setup(settings.log_level, [getattr(settings, name) for name in SECRETS])


def fail(message: str, code: int) -> None:
    click.echo(f"kpsbot: {message}", err=True)
    sys.exit(code)


class Context:
    """Loads settings once per process; commands ask only for what they need."""

    def __init__(self) -> None:
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = load_settings()
            except SettingsError as exc:
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


pass_context = click.make_pass_decorator(Context, ensure=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kpsbot")
def cli() -> None:
    """kpsbot: Huawei Cloud KPS key-pair tasks in Slack.

    Settings come from the environment and a .env file in the working directory
    (see .env.example).
    """


# -- kpsbot tasks ------------------------------------------------------------------


@cli.command()
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
def tasks(ctx: Context, limit: int | None, offset: int, fetch_all: bool, as_json: bool) -> None:
    """Print the key-pair tasks running now."""
    from kpsbot.kps.client import KpsError
    from kpsbot.tables import render_task_table

    settings = ctx.require("kps")
    client = settings.kps_client()
    try:
        if fetch_all:
            page = client.all_running_tasks()
        else:
            page = client.list_running_tasks(limit or settings.page_size, offset)
    except KpsError as exc:
        fail(str(exc), EXIT_FAILED)  # one line: error_code, error_msg, request id
    if as_json:
        out = {"total": page.total, "tasks": [t.to_api() for t in page.tasks]}
        click.echo(json.dumps(out, ensure_ascii=False))
        return
    click.echo(
        render_task_table(page.tasks, page.total, 0 if fetch_all else offset, now=datetime.now(timezone.utc))
    )


# -- kpsbot watch ------------------------------------------------------------------


def open_store(settings: Settings):
    """The SQLite store at KPSBOT_DB; a file that cannot be opened is a settings problem (exit 2)."""
    import sqlite3

    from kpsbot.store import Store

    try:
        return Store(settings.db_path)
    except (OSError, sqlite3.Error, RuntimeError) as exc:
        fail(f"cannot open KPSBOT_DB {settings.db_path}: {exc}", EXIT_USAGE)


def health_report(settings: Settings, store, loop) -> dict:
    """What /healthz shows: the last successful poll and the state of the notification outbox."""
    last = store.last_successful_poll()
    return {
        "status": "ok",
        "version": __version__,
        "mode": "socket" if settings.socket_mode else "http",
        "watcher": "leader" if loop.is_leader else "standby",
        "last_successful_poll": last.isoformat() if last else None,
        "pending_notifications": store.pending_deliveries(),
        "failed_notifications": store.failed_deliveries(),
        "last_delivery_error": store.last_delivery_error(),
    }


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
    from kpsbot.watch.cycle import Watcher
    from kpsbot.watch.delivery import ConsoleSender, sender_for

    settings = ctx.require("kps", "channel")
    store = open_store(settings)
    sender = sender_for(settings) or ConsoleSender(sys.stdout)
    watcher = Watcher.from_settings(settings, settings.kps_client(), store, sender)
    if not once:
        run_watcher_alone(watcher, store, settings)
        return
    from kpsbot.watch.loop import default_owner

    owner = default_owner()
    # The same lease as `kpsbot run`'s watcher: a one-off cycle never posts beside a running bot.
    if not store.acquire_lease(owner, ttl=3 * settings.poll_seconds + 5):
        fail(
            f"another kpsbot ({store.lease_holder()}) is watching {settings.db_path}: stop it, or use "
            "another KPSBOT_DB",
            EXIT_FAILED,
        )
    try:
        failed_before = store.failed_deliveries()
        report = watcher.run_cycle()
    finally:
        store.release_lease(owner)
    click.echo(report.summary())
    if report.failed_deliveries > failed_before:
        fail(f"Slack refused a notification: {store.last_delivery_error()}", EXIT_FAILED)
    if report.delivery_error:
        fail(f"Slack failed: {report.delivery_error} (the notification stays queued)", EXIT_FAILED)
    if not report.ok:
        sys.exit(EXIT_FAILED)


def run_watcher_alone(watcher, store, settings: Settings) -> None:
    """The watcher loop in the foreground until SIGINT/SIGTERM, stopped within the same budget as
    `kpsbot run`; the lease is released on the way out."""
    from kpsbot.slack.server import run_services
    from kpsbot.watch.loop import WatcherLoop

    log.info("watching project %s every %d s (Ctrl-C stops)", settings.project_id, settings.poll_seconds)
    try:
        run_services([WatcherLoop(watcher, store, interval=settings.poll_seconds)])
    finally:
        store.close()


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
    if bool(ak) != bool(sk):
        missing = "CLOUD_SDK_SK (or --sk)" if ak else "CLOUD_SDK_AK (or --ak)"
        fail(f"{missing} is not set: the simulator checks signatures with both AK and SK", EXIT_USAGE)
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
    help="Address for the HTTP server (HTTP mode, or /healthz in Socket Mode when PORT is set).",
)
@pass_context
def run(ctx: Context, host: str) -> None:
    """Run the bot: Socket Mode if SLACK_APP_TOKEN is set, else HTTP on PORT; stops on SIGTERM/SIGINT."""

    from kpsbot.slack.app import build_app
    from kpsbot.slack.server import SlackStartError, serve, slack_start_errors
    from kpsbot.slack.workers import WorkerPool
    from kpsbot.watch.cycle import Watcher
    from kpsbot.watch.delivery import sender_for
    from kpsbot.watch.loop import WatcherLoop

    settings = ctx.require("kps", "channel")
    slack_wanted = bool(settings.slack_bot_token or settings.slack_app_token or settings.slack_signing_secret)
    if slack_wanted:
        ctx.require("slack")
    kps = settings.kps_client()
    store = open_store(settings)
    watcher = Watcher.from_settings(settings, kps, store, sender_for(settings))
    if not slack_wanted:
        log.warning(
            "Slack settings are not present (SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET or "
            "SLACK_APP_TOKEN): running the watcher only, /kps-tasks is not served"
        )
        run_watcher_alone(watcher, store, settings)
        return
    if not settings.channel:
        log.info("KPSBOT_CHANNEL is not set: task starts and finishes are recorded, not posted")
    loop = WatcherLoop(watcher, store, interval=settings.poll_seconds)
    work = WorkerPool()
    try:
        with slack_start_errors(settings.slack_api_url, f"{host}:{settings.port}"):
            app = build_app(settings, kps, executor=work)
            serve(
                app,
                settings,
                health=lambda: health_report(settings, store, loop),
                background=[work, loop],
                host=host,
            )
    except SlackStartError as exc:
        fail(str(exc), exc.exit_code)
    finally:
        store.close()


# -- kpsbot demo --------------------------------------------------------------------


@cli.command(short_help="The whole job locally, no accounts needed.")
@click.option("--duration", type=click.FloatRange(min=1), default=None, help="Stop after S seconds.")
@click.option("--cycles", type=click.IntRange(min=1), default=None, help="Stop after N polls.")
@click.option("--db", "db_path", default=None, help="SQLite file to use (default: a temporary one).")
@click.option("--blocks", "show_blocks", is_flag=True, help="Also print each message's Block Kit JSON.")
@click.option("--seed", type=int, default=None, help="Random seed for the simulated tasks.")
@pass_context
def demo(ctx: Context, duration, cycles, db_path, show_blocks, seed) -> None:
    """The whole job on this machine, no accounts needed: a KPS simulator, the watcher and the
    notifications printed here (also posted to Slack when SLACK_BOT_TOKEN and KPSBOT_CHANNEL are
    set; /kps-tasks served when SLACK_SIGNING_SECRET or SLACK_APP_TOKEN is set too).

    Runs until Ctrl-C, or the --duration / --cycles bound.
    """
    from kpsbot.demo import DemoError, DemoOptions, run_demo
    from kpsbot.slack.server import SlackStartError

    settings = ctx.require("channel")
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
