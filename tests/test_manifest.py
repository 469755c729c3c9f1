"""manifest.yml creates the app kpsbot expects, and Slack's manifest schema accepts it."""

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_NAME = "manifest.schema.1.0.0.json"


def find_schema() -> Path:
    """The team's shared copy of Slack's schema when it sits beside the repository, else ours
    (tests/data holds the same MIT-licensed file, so the check never silently skips)."""
    for base in ROOT.parents:
        candidate = base / "shared" / "vendor" / "slack-manifest-schema" / SCHEMA_NAME
        if candidate.is_file():
            return candidate
    return ROOT / "tests" / "data" / "slack-manifest-schema" / SCHEMA_NAME


@pytest.fixture(scope="module")
def manifest() -> dict:
    return yaml.safe_load((ROOT / "manifest.yml").read_text())


def test_manifest_validates_against_slacks_schema(manifest):
    schema = json.loads(find_schema().read_text())
    jsonschema.validate(manifest, schema)


def test_manifest_declares_what_kpsbot_uses(manifest):
    [command] = manifest["features"]["slash_commands"]
    assert command["command"] == "/kps-tasks"
    assert "status <task_id>" in command["usage_hint"] and "subscribe" in command["usage_hint"]
    assert manifest["features"]["bot_user"]["display_name"]
    assert set(manifest["oauth_config"]["scopes"]["bot"]) == {"commands", "chat:write", "chat:write.public"}
    assert manifest["settings"]["interactivity"]["is_enabled"] is True
    assert manifest["settings"]["socket_mode_enabled"] is True


def test_manifest_enables_the_home_tab_and_its_event(manifest):
    assert manifest["features"]["app_home"]["home_tab_enabled"] is True
    assert manifest["features"]["app_home"]["messages_tab_enabled"] is False  # kpsbot reads no DMs
    assert manifest["settings"]["event_subscriptions"]["bot_events"] == ["app_home_opened"]


def test_http_mode_urls_are_documented_and_valid_when_uncommented():
    text = (ROOT / "manifest.yml").read_text()
    assert "# url: https://YOUR-HOST/slack/events" in text
    # interactivity and event subscriptions
    assert text.count("# request_url: https://YOUR-HOST/slack/events") == 2
    http = yaml.safe_load(text.replace("# url:", "url:").replace("# request_url:", "request_url:"))
    http["settings"]["socket_mode_enabled"] = False
    assert http["features"]["slash_commands"][0]["url"] == "https://YOUR-HOST/slack/events"
    assert http["settings"]["interactivity"]["request_url"] == "https://YOUR-HOST/slack/events"
    assert http["settings"]["event_subscriptions"]["request_url"] == "https://YOUR-HOST/slack/events"
    jsonschema.validate(http, json.loads(find_schema().read_text()))
