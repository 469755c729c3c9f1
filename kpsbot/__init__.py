"""kpsbot: a chat-ops Slack bot for Huawei Cloud KPS key-pair tasks."""

__version__ = "0.2.0"
