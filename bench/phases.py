"""Runs a kpsbot command in this process with wall-clock timers around the stages of a cycle, then
prints `phases: {...}` (seconds per stage, summed over calls, with call counts) to stderr.

    python bench/phases.py watch --once

Used by profile_kpsbot.py: a sampling profile says which functions are hot, this says which stage
of the pipeline the wall time is spent in (stages overlap where kpsbot runs them on threads).
Nothing in kpsbot is changed: the timers wrap its functions from outside.
"""

from __future__ import annotations

import functools
import importlib
import json
import sys
import threading
import time

STAGES = {
    "import kpsbot.cli": None,
    "fetch: KpsClient.running_task_records": ("kpsbot.kps.client", "KpsClient", "running_task_records"),
    "fetch: KpsClient.all_running_tasks": ("kpsbot.kps.client", "KpsClient", "all_running_tasks"),
    "fetch: KpsClient.all_failed_tasks": ("kpsbot.kps.client", "KpsClient", "all_failed_tasks"),
    "store: Store.running_snapshot": ("kpsbot.store", "Store", "running_snapshot"),
    "store: Store.stuck_candidates": ("kpsbot.store", "Store", "stuck_candidates"),
    "store: Store.tasks": ("kpsbot.store", "Store", "tasks"),
    "store: Store.start_channels": ("kpsbot.store", "Store", "start_channels"),
    "store: Store.record_poll": ("kpsbot.store", "Store", "record_poll"),
    "diff: diff_snapshot": ("kpsbot.watch.cycle", None, "diff_snapshot"),
    "outcomes: OutcomeLookup (status GETs)": ("kpsbot.watch.outcomes", "OutcomeLookup", "__call__"),
    "plan: plan_poll": ("kpsbot.watch.cycle", None, "plan_poll"),
    "deliver: Watcher.deliver": ("kpsbot.watch.cycle", "Watcher", "deliver"),
    "cycle: Watcher.run_cycle": ("kpsbot.watch.cycle", "Watcher", "run_cycle"),
    "list: list_all": ("kpsbot.cli", None, None),
}

totals: dict[str, list[float]] = {}
lock = threading.Lock()


def timed(name: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            elapsed = time.perf_counter() - start
            with lock:
                entry = totals.setdefault(name, [0.0, 0])
                entry[0] += elapsed
                entry[1] += 1

    return wrapper


def patch() -> None:
    for name, where in STAGES.items():
        if not where or where[2] is None:
            continue
        module_name, owner_name, attribute = where
        module = importlib.import_module(module_name)
        owner = getattr(module, owner_name) if owner_name else module
        setattr(owner, attribute, timed(name, getattr(owner, attribute)))
    listing = importlib.import_module("kpsbot.kps.listing")
    listing.list_all = timed("list: list_all", listing.list_all)


def main() -> None:
    began = time.perf_counter()
    start = time.perf_counter()
    from kpsbot import cli

    totals["import kpsbot.cli"] = [time.perf_counter() - start, 1]
    patch()
    sys.argv = ["kpsbot", *sys.argv[1:]]
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code or 0
    finally:
        totals["process (from start of main)"] = [time.perf_counter() - began, 1]
        shown = {name: {"s": round(s, 4), "calls": n} for name, (s, n) in totals.items()}
        print("phases: " + json.dumps(shown), file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
