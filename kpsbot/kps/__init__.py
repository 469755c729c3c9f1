"""The Huawei Cloud KPS side: auth, models and the HTTP client (knows nothing of Slack or SQLite)."""

from kpsbot.kps.client import KpsClient, KpsError
from kpsbot.kps.models import FailedTask, RunningTask, TaskPage, TaskStatus

__all__ = ["FailedTask", "KpsClient", "KpsError", "RunningTask", "TaskPage", "TaskStatus"]
