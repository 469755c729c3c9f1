"""The Slack side: Block Kit rendering, the Bolt app and its listeners."""
