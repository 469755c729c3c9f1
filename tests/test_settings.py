"""Settings: parsing, validation messages, `.env` precedence, secrets never shown."""

import pytest

from kpsbot.kps.auth import AkSkAuth, TokenAuth
from kpsbot.settings import ProjectSetting, Settings, SettingsError, read_environment, settings_from

BASE = {
    "KPS_PROJECT_ID": "p1",
    "KPS_REGION": "cn-north-4",
    "CLOUD_SDK_AK": "AKEXAMPLE",
    "CLOUD_SDK_SK": "SKEXAMPLE",
}


def test_defaults_and_region_endpoint():
    s = settings_from(BASE)
    assert s.projects == (ProjectSetting("cn-north-4", "cn-north-4", "p1"),)
    assert s.projects[0].endpoint(s.endpoint_template) == "https://kms.cn-north-4.myhuaweicloud.com"
    assert s.iam_endpoint_template == "https://iam.{region}.myhuaweicloud.com"
    assert (s.stuck_minutes, s.admin_users, s.log_format) == (60, (), "text")
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
    assert s.projects == (ProjectSetting("p", None, "p"),)  # named by its ID: there is no region
    assert s.projects[0].endpoint(s.endpoint_template) == "http://127.0.0.1:9"
    assert s.require_kps().auth_kind == "token"


def test_aksk_preferred_over_token():
    assert settings_from({**BASE, "KPS_AUTH_TOKEN": "tok"}).auth_kind == "aksk"


@pytest.mark.parametrize(
    "env, name",
    [
        ({"KPS_REGION": "cn-north-4", "KPS_AUTH_TOKEN": "t"}, "KPS_PROJECT_ID"),
        ({"CLOUD_SDK_AK": "a", "CLOUD_SDK_SK": "b"}, "KPS_PROJECTS"),
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
        ("KPSBOT_LOG_FORMAT", "xml"),
        ("KPSBOT_STUCK_MINUTES", "-1"),
        ("KPSBOT_ADMIN_USERS", "root"),
        ("KPS_IAM_ENDPOINT", "iam.example.com"),
        ("KPS_PROJECT_ID", "has spaces"),
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
    for text in (repr(s), str(s), repr(AkSkAuth(s.ak, s.sk)), repr(TokenAuth(s.auth_token or ""))):
        for value in secrets.values():
            assert value not in text
    assert "id='p1'" in repr(s)


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
        Settings().db_path = "x"  # type: ignore[misc]


def test_a_channel_needs_a_bot_token():
    with pytest.raises(SettingsError, match="SLACK_BOT_TOKEN"):
        settings_from({**BASE, "KPSBOT_CHANNEL": "C0123"}).require_channel()
    assert settings_from({**BASE, "KPSBOT_CHANNEL": "C0123", "SLACK_BOT_TOKEN": "xoxb-1"}).require_channel()


# -- several projects (KPS_PROJECTS) -------------------------------------------------------

AKSK = {"CLOUD_SDK_AK": "AKEXAMPLE", "CLOUD_SDK_SK": "SKEXAMPLE"}


def test_projects_by_name_and_by_id():
    s = settings_from({**AKSK, "KPS_PROJECTS": " cn-north-4, ap-southeast-1_prod:0a1b2c ,cn-east-3_dev"})
    assert s.projects == (
        ProjectSetting("cn-north-4", "cn-north-4", None),
        ProjectSetting("ap-southeast-1_prod", "ap-southeast-1", "0a1b2c"),
        ProjectSetting("cn-east-3_dev", "cn-east-3", None),
    )
    endpoints = [p.endpoint(s.endpoint_template) for p in s.projects]
    assert endpoints[1] == "https://kms.ap-southeast-1.myhuaweicloud.com"
    assert s.require_kps() is s
    assert s.project("cn-east-3_dev") is s.projects[2] and s.project("nope") is None


def test_region_alone_with_aksk_is_the_regions_default_project_looked_up():
    s = settings_from({**AKSK, "KPS_REGION": "cn-north-4"})
    assert s.projects == (ProjectSetting("cn-north-4", "cn-north-4", None),)
    assert s.require_kps() is s


def test_kps_region_is_ignored_beside_kps_projects():
    # .env.example ships KPS_REGION=cn-north-4: adding KPS_PROJECTS must not make it an error.
    s = settings_from({**AKSK, "KPS_REGION": "cn-north-4", "KPS_PROJECTS": "eu-west-0:abc"})
    assert s.projects == (ProjectSetting("eu-west-0", "eu-west-0", "abc"),)


def test_endpoint_templates_per_region():
    env = {**AKSK, "KPS_PROJECTS": "cn-north-4:a,ap-southeast-1:b"}
    s = settings_from({**env, "KPS_ENDPOINT": "http://127.0.0.1:8443/{region}/"})
    assert [p.endpoint(s.endpoint_template) for p in s.projects] == [
        "http://127.0.0.1:8443/cn-north-4",
        "http://127.0.0.1:8443/ap-southeast-1",
    ]
    s = settings_from({**env, "KPS_IAM_ENDPOINT": "http://127.0.0.1:9/{region}"})
    assert s.iam_endpoint_template == "http://127.0.0.1:9/{region}"
    sdk = settings_from({**env, "HUAWEICLOUD_SDK_IAM_ENDPOINT": "https://iam.example.com"})
    assert sdk.iam_endpoint_template == "https://iam.example.com"  # honoured as the official SDK does
    one_region = settings_from(
        {**AKSK, "KPS_PROJECTS": "cn-north-4:a,cn-north-4_dev:b", "KPS_ENDPOINT": "http://x"}
    )
    assert [p.endpoint(one_region.endpoint_template) for p in one_region.projects] == ["http://x", "http://x"]


@pytest.mark.parametrize(
    "env, words",
    [
        ({"KPS_PROJECTS": "cn-north-4,cn-north-4"}, ["KPS_PROJECTS", "'cn-north-4' twice"]),
        ({"KPS_PROJECTS": "cn-north-4:a,cn-east-3:a"}, ["KPS_PROJECTS", "same project ID"]),
        ({"KPS_PROJECTS": "North China"}, ["KPS_PROJECTS entry 'North China'", "region"]),
        ({"KPS_PROJECTS": "prod"}, ["KPS_PROJECTS entry 'prod'"]),
        ({"KPS_PROJECTS": ":abc"}, ["KPS_PROJECTS entry ':abc'", "no project name"]),
        ({"KPS_PROJECTS": "cn-north-4:a b"}, ["KPS_PROJECTS entry 'cn-north-4:a b'", "malformed project ID"]),
        ({"KPS_PROJECTS": " , "}, ["KPS_PROJECTS is empty"]),
        ({"KPS_PROJECTS": "cn-north-4", "KPS_PROJECT_ID": "x"}, ["KPS_PROJECTS and KPS_PROJECT_ID"]),
        (
            {"KPS_PROJECTS": "cn-north-4:a,ap-southeast-1:b", "KPS_ENDPOINT": "http://127.0.0.1:1"},
            ["KPS_ENDPOINT", "{region}", "ap-southeast-1, cn-north-4"],
        ),
        (
            {"KPS_PROJECTS": "cn-north-4:a,ap-southeast-1:b", "KPS_IAM_ENDPOINT": "http://127.0.0.1:1"},
            ["KPS_IAM_ENDPOINT", "{region}"],
        ),
        ({"KPS_PROJECT_ID": "p", "KPS_ENDPOINT": "http://h/{region}"}, ["KPS_ENDPOINT", "no region"]),
    ],
)
def test_bad_project_settings_name_the_setting_and_the_entry(env, words):
    with pytest.raises(SettingsError) as raised:
        settings_from({**AKSK, **env})
    for word in words:
        assert word in str(raised.value)


def test_an_iam_token_cannot_look_up_a_name():
    s = settings_from({"KPS_AUTH_TOKEN": "tok", "KPS_PROJECTS": "cn-north-4:abc,cn-east-3_dev"})
    with pytest.raises(SettingsError, match="KPS_PROJECTS entry 'cn-east-3_dev'.*KPS_AUTH_TOKEN"):
        s.require_kps()
    assert settings_from({"KPS_AUTH_TOKEN": "tok", "KPS_PROJECTS": "cn-north-4:abc"}).require_kps()


def test_project_id_without_region_needs_an_endpoint():
    with pytest.raises(SettingsError, match="KPS_REGION is not set"):
        settings_from({**AKSK, "KPS_PROJECT_ID": "p1"}).require_kps()


def test_every_setting_read_is_in_env_example_and_the_readme():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    read = set(
        re.findall(
            r'"((?:KPS|KPSBOT|SLACK|CLOUD_SDK)_[A-Z_]+|PORT)"', (root / "kpsbot/settings.py").read_text()
        )
    )
    example = set(re.findall(r"^([A-Z][A-Z0-9_]+)=", (root / ".env.example").read_text(), re.MULTILINE))
    readme = (root / "README.md").read_text()
    assert read - {"HUAWEICLOUD_SDK_IAM_ENDPOINT"} <= example, sorted(read - example)
    assert [name for name in sorted(read) if f"`{name}`" not in readme] == []
