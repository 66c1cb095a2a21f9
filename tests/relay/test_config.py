"""alert_relay.config: fail fast, name the variable, never show the webhook key."""

from __future__ import annotations

import pytest

from alert_relay.config import ConfigError, Settings

URL = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=secret-robot-key"


def test_defaults_and_overrides():
    settings = Settings.from_env({"ALERT_WECOM_WEBHOOK_URL": URL})
    assert (settings.host, settings.port, settings.send_timeout_s) == ("127.0.0.1", 9095, 10.0)
    settings = Settings.from_env(
        {
            "ALERT_WECOM_WEBHOOK_URL": URL,
            "ALERT_RELAY_HOST": "0.0.0.0",
            "ALERT_RELAY_PORT": "9500",
            "RUNBOOK_BASE_URL": "https://git.example.cn/nexus/-/blob/main",
            "ALERT_RELAY_SEND_TIMEOUT_S": "2.5",
        }
    )
    assert (settings.host, settings.port, settings.send_timeout_s) == ("0.0.0.0", 9500, 2.5)
    assert settings.runbook_base_url == "https://git.example.cn/nexus/-/blob/main"


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({}, "ALERT_WECOM_WEBHOOK_URL is not set"),
        ({"ALERT_WECOM_WEBHOOK_URL": "qyapi.weixin.qq.com/send"}, "ALERT_WECOM_WEBHOOK_URL"),
        ({"ALERT_WECOM_WEBHOOK_URL": URL, "ALERT_RELAY_PORT": "http"}, "ALERT_RELAY_PORT"),
        ({"ALERT_WECOM_WEBHOOK_URL": URL, "ALERT_RELAY_SEND_TIMEOUT_S": "0"}, "SEND_TIMEOUT_S"),
        ({"ALERT_WECOM_WEBHOOK_URL": URL, "RUNBOOK_BASE_URL": "wiki/runbook"}, "RUNBOOK_BASE_URL"),
    ],
)
def test_a_bad_setting_names_the_variable(env, names):
    with pytest.raises(ConfigError, match=names):
        Settings.from_env(env)


def test_the_robot_key_never_reaches_repr():
    assert "secret-robot-key" not in repr(Settings.from_env({"ALERT_WECOM_WEBHOOK_URL": URL}))
