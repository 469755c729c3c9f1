"""The floor for poll_cycle.py: GET every running-tasks page and json.loads it, nothing else."""

import json
import os

import requests


def main() -> None:
    url = f"{os.environ['KPS_ENDPOINT']}/v3/{os.environ['KPS_PROJECT_ID']}/running-tasks"
    session = requests.Session()
    session.headers["X-Auth-Token"] = os.environ["KPS_AUTH_TOKEN"]
    offset, count = 0, 0
    while True:
        body = json.loads(session.get(url, params={"limit": 1000, "offset": offset}, timeout=30).content)
        rows = body["tasks"]
        count += len(rows)
        offset += len(rows)
        if not rows or offset >= body["total"]:
            break
    print(count)


if __name__ == "__main__":
    main()
