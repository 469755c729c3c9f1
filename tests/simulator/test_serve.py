"""`serve` as a real process: its start-up line and its stop on SIGTERM."""

import subprocess
import sys

from simkit import AK, PROJECT, SK, TOKEN, make_client

from kpsbot.kps.auth import AkSkAuth


def test_serve_prints_one_line_without_secrets_and_stops_on_sigterm():
    code = (
        "from kpsbot.simulator import Simulator, serve\n"
        f"sim = Simulator(project_id='{PROJECT}', ak='{AK}', sk='{SK}', token='{TOKEN}', tasks=4)\n"
        "serve('127.0.0.1', 0, sim)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        url = line.split()[4]
        assert line == f"KPS simulator listening on {url} (project {PROJECT}, 4 tasks)"
        page = make_client(url, AkSkAuth(AK, SK, PROJECT)).list_running_tasks()
        assert page.total == 4
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        rest = proc.stdout.read()
    finally:
        proc.kill()
        proc.stdout.close()
    for secret in (AK, SK, TOKEN):
        assert secret not in line + rest
