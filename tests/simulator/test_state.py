"""The simulated state of one project: tasks, their lifecycle and reproducibility."""

import time

import pytest

from kpsbot.simulator import Simulator

# -- lifecycle -----------------------------------------------------------------------------


def test_same_seed_gives_the_same_tasks():
    def snapshot():
        return Simulator(tasks=20, seed=42, clock=lambda: 1_700_000_000.0).running()

    first = snapshot()
    assert first == snapshot()
    assert all(t["operate_type"] in ("RUNNING_RESET", "RUNNING_REPLACE", "RUNNING_UNBIND") for t in first)
    assert all(t["task_time"].isdigit() and len(t["task_time"]) == 13 for t in first)


def test_add_finish_hide_remove(sim):
    ok = sim.add_task(operate_type="RUNNING_REPLACE", task_id="ok")
    bad = sim.add_task(operate_type="RUNNING_UNBIND", task_id="bad", server_name="db-02")
    hidden = sim.add_task(task_id="hidden")
    gone = sim.add_task(task_id="gone")
    assert ok["operate_type"] == "RUNNING_REPLACE" and bad["server_name"] == "db-02"
    assert sim.status("ok") == "RUNNING_REPLACE"

    assert sim.finish_task("ok") == "SUCCESS_REPLACE"
    sim.finish_task("bad", success=False, error_code="KPS.2003", error_msg="server is not running")
    sim.hide_task("hidden")
    sim.remove_task("gone")

    assert [t["task_id"] for t in sim.running()] == []
    assert sim.status("ok") == "SUCCESS_REPLACE"
    assert sim.status("bad") == "FAILED_UNBIND"
    assert sim.status("hidden") == hidden["operate_type"] == "RUNNING_RESET"
    assert sim.status(gone["task_id"]) is None
    [failed] = sim.failed()
    assert failed["task_id"] == "bad"
    assert failed["task_error_code"] == "KPS.2003"
    assert failed["task_error_msg"] == "server is not running"
    assert failed["server_name"] == "db-02"

    kinds = [(t["kind"], t["task_id"], t["outcome"]) for t in sim.transitions()]
    assert kinds == [
        ("started", "ok", None),
        ("started", "bad", None),
        ("started", "hidden", None),
        ("started", "gone", None),
        ("finished", "ok", "succeeded"),
        ("finished", "bad", "failed"),
    ]
    with pytest.raises(KeyError):
        sim.finish_task("ok")
    with pytest.raises(ValueError):
        sim.add_task(task_id="hidden")  # still running behind the list
    again = sim.add_task(task_id="bad", task_time_ms=9_999_999_999_000)  # a new run of a finished task
    assert sim.status("bad") == "RUNNING_RESET" and again["task_time"] == "9999999999000"
    sim.finish_task("bad", success=False, error_code="KPS.9")
    assert [(r["task_id"], r["task_error_code"]) for r in sim.failed()] == [
        ("bad", "KPS.2003"),
        ("bad", "KPS.9"),
    ]


def test_rate_starts_and_finishes_tasks_on_the_clock():
    now = [1_000.0]
    sim = Simulator(rate=2.0, finish_after=(1.0, 1.0), fail_ratio=1.0, seed=9, clock=lambda: now[0])
    sim.tick(1_001.0)
    assert len(sim.running()) == 2  # started at 1000.5 and 1001.0
    assert [t["task_time"] for t in sim.running()] == ["1000500", "1001000"]
    sim.tick(1_002.0)
    assert len(sim.running()) == 2  # two more started, the first two finished
    finished = [t for t in sim.transitions() if t["kind"] == "finished"]
    assert [(t["outcome"], t["at"]) for t in finished] == [("failed", 1_001.5), ("failed", 1_002.0)]
    assert {t["task_id"] for t in sim.failed()} == {t["task_id"] for t in finished}
    assert all(sim.status(t["task_id"]).startswith("FAILED_") for t in finished)


def test_static_snapshot_never_finishes_by_itself():
    sim = Simulator(tasks=5, seed=1)
    sim.tick(time.time() + 10 * 86_400)
    assert len(sim.running()) == 5
    assert sim.transitions() == []


def test_initial_tasks_finish_when_the_simulator_is_live():
    sim = Simulator(tasks=3, seed=1, rate=0.001, finish_after=(5, 10), fail_ratio=0.0, clock=lambda: 0.0)
    sim.tick(11.0)
    assert sim.running() == []
    assert [t["outcome"] for t in sim.transitions()] == ["succeeded"] * 3


def test_finish_in_schedules_an_explicit_task():
    now = [50.0]
    sim = Simulator(clock=lambda: now[0], fail_ratio=0.0, seed=2)
    sim.add_task(task_id="soon", finish_in=2.0)
    now[0] = 52.0
    assert sim.status("soon") == "RUNNING_RESET"
    sim.tick()
    assert sim.status("soon") == "SUCCESS_RESET"


def test_churn_finishes_and_starts_the_same_number():
    sim = Simulator(project_id="p1", tasks=50, seed=9)
    before = {t["task_id"] for t in sim.running()}
    assert sim.churn(10) == {"finished": 10, "started": 10}
    after = {t["task_id"] for t in sim.running()}
    assert len(after) == 50 and len(before - after) == 10 and len(after - before) == 10
    kinds = [t["kind"] for t in sim.transitions()]
    assert kinds.count("finished") == 10 and kinds.count("started") == 10


# -- bounded memory ----------------------------------------------------------------------------


def test_transitions_keep_only_the_newest():
    sim = Simulator(max_transitions=5, seed=1)
    for index in range(4):
        sim.add_task(task_id=f"t{index}")
    for index in range(4):
        sim.finish_task(f"t{index}")
    kinds = [(t["kind"], t["task_id"]) for t in sim.transitions()]
    assert kinds == [("started", "t3")] + [("finished", f"t{index}") for index in range(4)]


def test_the_oldest_finished_tasks_are_forgotten_first():
    sim = Simulator(max_finished=2, seed=1)
    sim.add_task(task_id="still-running")
    for task_id in ("a", "b", "c"):
        sim.add_task(task_id=task_id)
        sim.finish_task(task_id)
    assert [sim.status(task_id) for task_id in ("a", "b", "c")] == [None, "SUCCESS_RESET", "SUCCESS_RESET"]
    assert sim.status("still-running") == "RUNNING_RESET"  # only finished tasks are forgotten
    assert sim.counts()["known"] == 3
    sim.add_task(task_id="a")  # a forgotten ID may be used again
    assert sim.status("a") == "RUNNING_RESET"


def test_the_failed_list_keeps_only_the_newest_rows():
    sim = Simulator(max_failed=2, seed=1)
    for task_id in ("a", "b", "c"):
        sim.add_task(task_id=task_id, task_time_ms=1_000)
        sim.finish_task(task_id, success=False)
    assert [t["task_id"] for t in sim.failed()] == ["b", "c"]
    assert sim.status("a") == "FAILED_RESET"  # the status outlives the failed row


def test_a_forgotten_failed_task_leaves_the_failed_list_too():
    sim = Simulator(max_finished=1, seed=1)
    sim.add_task(task_id="bad")
    sim.finish_task("bad", success=False)
    sim.add_task(task_id="good")
    sim.finish_task("good")
    assert sim.status("bad") is None
    assert sim.failed() == []
