"""Baseline for client_vs_sdk.py: page every running task with the official huaweicloudsdkkps client.

Prints the same `{"total": N, "tasks": [...]}` JSON as `kpsbot tasks --all --json`.
"""

import json
import os
import sys

from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkkps.v3 import KpsClient, ListRunningTaskRequest

FIELDS = ("task_id", "operate_type", "task_time", "server_name", "server_id", "keypair_name")


def main() -> None:
    config = HttpConfig.get_default_config()
    config.ignore_ssl_verification = True
    credentials = BasicCredentials(
        os.environ["CLOUD_SDK_AK"], os.environ["CLOUD_SDK_SK"], os.environ["KPS_PROJECT_ID"]
    )
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
                tasks.append({name: getattr(row, name) for name in FIELDS})
        offset += len(rows)
        if not rows or offset >= (page.total or 0):
            break
    json.dump({"total": len(tasks), "tasks": tasks}, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
