"""Baseline for client_vs_sdk.py: page every running task with the official huaweicloudsdkkps client.

For each `name:id` of KPS_PROJECTS in turn (one SDK client per project, AK/SK from CLOUD_SDK_AK and
CLOUD_SDK_SK, endpoint KPS_ENDPOINT), prints the JSON `kpsbot tasks --all --json` prints:
`{"total": N, "tasks": [...]}`, each task with the API's fields then `project` and `project_id`, the
first copy of a task_id per project kept, `total` the number of tasks printed.
"""

import json
import os
import sys

from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkkps.v3 import KpsClient, ListRunningTaskRequest

FIELDS = ("task_id", "operate_type", "task_time", "server_name", "server_id", "keypair_name")


def project_tasks(name: str, project_id: str, config: HttpConfig) -> list[dict]:
    credentials = BasicCredentials(os.environ["CLOUD_SDK_AK"], os.environ["CLOUD_SDK_SK"], project_id)
    client = (
        KpsClient.new_builder()
        .with_http_config(config)
        .with_credentials(credentials)
        .with_endpoints([os.environ["KPS_ENDPOINT"]])
        .build()
    )
    tasks, seen, offset = [], set(), 0
    while True:
        page = client.list_running_task(ListRunningTaskRequest(limit=1000, offset=offset))
        rows = page.tasks or []
        for row in rows:
            if row.task_id not in seen:
                seen.add(row.task_id)
                task = {field: getattr(row, field) for field in FIELDS}
                task["project"], task["project_id"] = name, project_id
                tasks.append(task)
        offset += len(rows)
        if not rows or offset >= (page.total or 0):
            return tasks


def main() -> None:
    config = HttpConfig.get_default_config()
    config.ignore_ssl_verification = True
    tasks = []
    for entry in os.environ["KPS_PROJECTS"].split(","):
        name, project_id = entry.split(":", 1)
        tasks += project_tasks(name, project_id, config)
    # json.dumps, not json.dump: dump() encodes in pure Python and writes millions of small pieces
    # (it tripled this script's time). Compact separators: the same bytes as kpsbot's output.
    out = json.dumps({"total": len(tasks), "tasks": tasks}, ensure_ascii=False, separators=(",", ":"))
    sys.stdout.write(out + "\n")


if __name__ == "__main__":
    main()
