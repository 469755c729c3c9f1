"""Settings: parsing, validation messages, `.env` precedence, secrets never shown."""

import pytest

from kpsbot.settings import Settings, SettingsError, read_environment, settings_from

BASE = {
    "KPS_PROJECT_ID": "p1",
    "KPS_REGION": "cn-north-4",
    "CLOUD_SDK_AK": "AKEXAMPLE",
    "CLOUD_SDK_SK": "SKEXAMPLE",
}


def test_defaults_and_region_endpoint():
    s = settings_from(BASE)
    assert s.endpoint == "https://kms.cn-north-4.myhuaweicloud.com"
    assert (s.poll_seconds, s.page_size, s.burst, s.outage_polls, s.retention_days, s.port) == (
        30,
        10,
        5,
        3,
        30,
        3000,
    )
    assert s.db_path == "kpsbot.db" and s.slack_api_url == "https://slack.com/api/"
    assert s.require_kps().auth_kind == "aksk"


def test_endpoint_override_wins_and_region_optional():
    s = settings_from({"KPS_PROJECT_ID": "p", "KPS_ENDPOINT": "http://127.0.0.1:9/", "KPS_AUTH_TOKEN": "t"})
    assert s.endpoint == "http://127.0.0.1:9"
    assert s.require_kps().auth_kind == "token"


def test_aksk_preferred_over_token():
    assert settings_from({**BASE, "KPS_AUTH_TOKEN": "tok"}).auth_kind == "aksk"


@pytest.mark.parametrize(
    "env, name",
    [
        ({"KPS_REGION": "cn-north-4", "CLOUD_SDK_AK": "a", "CLOUD_SDK_SK": "b"}, "KPS_PROJECT_ID"),
        ({"KPS_PROJECT_ID": "p", "CLOUD_SDK_AK": "a", "CLOUD_SDK_SK": "b"}, "KPS_REGION"),
        ({"KPS_PROJECT_ID": "p", "KPS_REGION": "cn-north-4"}, "CLOUD_SDK_AK"),
        ({"KPS_PROJECT_ID": "p", "KPS_REGION": "cn-north-4", "CLOUD_SDK_AK": "a"}, "CLOUD_SDK_SK"),
    ],
)
def test_missing_kps_settings_are_named(env, name):
    with pytest.raises(SettingsError, match=name):
        settings_from(env).require_kps()


@pytest.mark.parametrize(
    "key, value",
    [
        ("KPSBOT_POLL_SECONDS", "soon"),
        ("KPSBOT_POLL_SECONDS", "0"),
        ("KPSBOT_PAGE_SIZE", "500"),
        ("PORT", "99999"),
        ("KPS_REGION", "North China 4"),
        ("KPS_ENDPOINT", "kms.example.com"),
        ("SLACK_API_URL", "ftp://x"),
        ("KPSBOT_CHANNEL", "#ops"),
        ("KPSBOT_ALLOWED_USERS", "alice,bob"),
        ("KPSBOT_LOG_LEVEL", "LOUD"),
    ],
)
def test_malformed_values_name_the_setting(key, value):
    with pytest.raises(SettingsError, match=key):
        settings_from({**BASE, key: value})


def test_lists_are_parsed():
    s = settings_from({**BASE, "KPSBOT_ALLOWED_CHANNELS": " C1, C2 ,", "KPSBOT_ALLOWED_USERS": "U1"})
    assert s.allowed_channels == ("C1", "C2") and s.allowed_users == ("U1",)


def test_slack_requirements():
    with pytest.raises(SettingsError, match="SLACK_BOT_TOKEN"):
        settings_from(BASE).require_slack()
    with pytest.raises(SettingsError, match="SLACK_SIGNING_SECRET"):
        settings_from({**BASE, "SLACK_BOT_TOKEN": "xoxb-1"}).require_slack()
    socket = settings_from({**BASE, "SLACK_BOT_TOKEN": "xoxb-1", "SLACK_APP_TOKEN": "xapp-1"}).require_slack()
    assert socket.socket_mode


def test_repr_masks_every_secret():
    secrets = {
        "CLOUD_SDK_AK": "AK-VISIBLE-1",
        "CLOUD_SDK_SK": "SK-VISIBLE-2",
        "CLOUD_SDK_SECURITY_TOKEN": "ST-3",
        "KPS_AUTH_TOKEN": "TOK-4",
        "SLACK_BOT_TOKEN": "xoxb-5",
        "SLACK_SIGNING_SECRET": "SIGN-6",
        "SLACK_APP_TOKEN": "xapp-7",
    }
    s = settings_from({**BASE, **secrets})
    for text in (repr(s), str(s), repr(s.kps_auth()), repr(s.kps_client())):
        for value in secrets.values():
            assert value not in text
    assert "project_id='p1'" in repr(s)


def test_env_file_loaded_and_real_environment_wins(tmp_path, monkeypatch, caplog):
    env_file = tmp_path / ".env"
    env_file.write_text("KPS_PROJECT_ID=from-file\nKPSBOT_PAGE_SIZE=7\n")
    env_file.chmod(0o644)
    monkeypatch.setenv("KPS_PROJECT_ID", "from-env")
    monkeypatch.delenv("KPSBOT_PAGE_SIZE", raising=False)
    values = read_environment(env_file)
    assert values["KPS_PROJECT_ID"] == "from-env"
    assert values["KPSBOT_PAGE_SIZE"] == "7"
    assert "readable by other users" in caplog.text
    caplog.clear()
    env_file.chmod(0o600)
    read_environment(env_file)
    assert "readable by other users" not in caplog.text


def test_settings_object_is_frozen():
    with pytest.raises(AttributeError):
        Settings().project_id = "x"  # type: ignore[misc]


def test_a_channel_needs_a_bot_token():
    with pytest.raises(SettingsError, match="SLACK_BOT_TOKEN"):
        settings_from({**BASE, "KPSBOT_CHANNEL": "C0123"}).require_channel()
    assert settings_from({**BASE, "KPSBOT_CHANNEL": "C0123", "SLACK_BOT_TOKEN": "xoxb-1"}).require_channel()
