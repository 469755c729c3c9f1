"""Paging through every running task: page after page from a near KPS, pages fetched ahead from a slow one."""

import pytest

from kpsbot.kps.auth import AkSkAuth
from kpsbot.kps.client import KpsClient
from kpsbot.simulator import Simulator, SimulatorServer

PAGES, PAGE_SIZE = 6, 50


@pytest.fixture
def served():
    sim = Simulator(project_id="p1", ak="AK", sk="SK", tasks=PAGES * PAGE_SIZE, seed=3, rate=0.0)
    with SimulatorServer(sim) as server:
        yield sim, KpsClient(server.url, "p1", AkSkAuth("AK", "SK", "p1"), retries=0, backoff=0)


def listed_after_two_pages(sim, client) -> int:
    """How many requests KPS had seen when the second page was handed over."""
    pages = client._row_pages("running-tasks", PAGE_SIZE, prefetch=3)
    try:
        next(pages)
        next(pages)
        return sim.requests
    finally:
        pages.close()


def test_a_near_kps_is_read_page_after_page(served):
    sim, client = served
    client.slow_page_seconds = 5.0  # no loopback page takes that long
    before = sim.requests
    assert listed_after_two_pages(sim, client) - before == 2


def test_once_a_page_is_slow_the_next_pages_are_asked_for_ahead(served):
    sim, client = served
    client.slow_page_seconds = 0.05
    sim.delay = 0.2  # every answer waits: the first page already takes longer than 0.05 s
    before = sim.requests
    # Page 1 alone; then pages 2, 3 and 4 at once, and page 2 handed over while 3 and 4 are coming.
    assert listed_after_two_pages(sim, client) - before == 4


@pytest.mark.parametrize("slow_page_seconds", [5.0, 0.0], ids=["page after page", "fetched ahead"])
def test_both_ways_list_every_task_once_in_order(served, slow_page_seconds):
    sim, client = served
    client.slow_page_seconds = slow_page_seconds
    expected = [task.task_id for task in client.list_running_tasks(PAGES * PAGE_SIZE, 0).tasks]
    records = client.running_task_records(page_size=PAGE_SIZE)
    assert list(records) == expected and len(expected) == PAGES * PAGE_SIZE
    assert [t.task_id for t in client.all_running_tasks(page_size=PAGE_SIZE).tasks] == expected
