"""wechat_gateway.config: defaults, and start-up errors that name the variable."""

import pytest

from wechat_gateway.config import DEVELOPMENT_AES_KEY, DEVELOPMENT_TOKEN, Settings
from wechat_gateway.errors import ConfigError

GOOD = {"WECHAT_TOKEN": "tok123", "WECHAT_APPID": "wx1", "WECHAT_ENCODING_AES_KEY": "A" * 43}


def test_defaults():
    settings = Settings.from_env({"WECHAT_TOKEN": "tok123"})
    assert settings.strict_verify and settings.max_clock_skew_s == 300
    assert settings.dedup_window_s == 120 and settings.dedup_max == 500
    assert settings.reply_budget_s == 4.5 and settings.redis_url is None
    assert settings.slow_reply_mode == "retry" and not settings.debug_endpoints
    assert not settings.account.encryption_enabled


def test_rotation_lists():
    settings = Settings.from_env(
        {**GOOD, "WECHAT_ACCEPT_TOKENS": " old1, old2 ,,", "WECHAT_ACCEPT_AES_KEYS": "B" * 43}
    )
    assert settings.account.accepted_tokens == ("tok123", "old1", "old2")
    assert len(settings.account.aes_keys) == 2 and settings.account.aes_keys[0] == bytes(32)


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({}, "WECHAT_TOKEN"),
        ({**GOOD, "WECHAT_ENCODING_AES_KEY": "A" * 42 + "!"}, "WECHAT_ENCODING_AES_KEY"),
        ({**GOOD, "WECHAT_ENCODING_AES_KEY": "short"}, "WECHAT_ENCODING_AES_KEY"),
        ({**GOOD, "WECHAT_ACCEPT_AES_KEYS": "bad"}, "WECHAT_ACCEPT_AES_KEYS"),
        ({**GOOD, "WECHAT_APPID": ""}, "WECHAT_APPID"),
        ({**GOOD, "STRICT_WECHAT_VERIFY": "maybe"}, "STRICT_WECHAT_VERIFY"),
        ({**GOOD, "WECHAT_MAX_CLOCK_SKEW": "-1"}, "WECHAT_MAX_CLOCK_SKEW"),
        ({**GOOD, "WECHAT_DEDUP_WINDOW": "10"}, "WECHAT_DEDUP_WINDOW"),
        ({**GOOD, "WECHAT_DEDUP_MAX": "many"}, "WECHAT_DEDUP_MAX"),
        ({**GOOD, "WECHAT_REPLY_BUDGET": "6"}, "WECHAT_REPLY_BUDGET"),
        ({**GOOD, "WECHAT_RETRY_HOLD": "4"}, "WECHAT_RETRY_HOLD"),  # WeChat would see the 503
        ({**GOOD, "REDIS_URL": "localhost:6379"}, "REDIS_URL"),
        ({**GOOD, "AI_API_URL": "ai-api:8000"}, "AI_API_URL"),
        ({**GOOD, "LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({**GOOD, "WECHAT_SLOW_REPLY_MODE": "custom"}, "WECHAT_APPSECRET"),
        ({**GOOD, "WECHAT_TOKEN": "has space"}, "WECHAT_TOKEN"),
        # A job may wait for its answer longer than the window keeps it:
        ({**GOOD, "WECHAT_DEDUP_WINDOW": "30"}, "WECHAT_LATE_ANSWER_TIMEOUT"),
        (
            {
                **GOOD,
                "WECHAT_CUSTOM_WINDOW": "300",
                "WECHAT_SLOW_REPLY_MODE": "custom",
                "WECHAT_APPSECRET": "appsecret123",
            },
            "WECHAT_CUSTOM_WINDOW",
        ),
    ],
)
def test_bad_values_name_the_variable(env, names):
    with pytest.raises(ConfigError, match=names):
        Settings.from_env(env)


def test_production_refuses_development_values_and_debug():
    prod = {**GOOD, "DEPLOY_ENV": "production"}
    assert Settings.from_env(prod).deploy_env == "production"
    with pytest.raises(ConfigError, match="development"):
        Settings.from_env({**prod, "WECHAT_TOKEN": DEVELOPMENT_TOKEN})
    with pytest.raises(ConfigError, match="development"):
        Settings.from_env({**prod, "WECHAT_ENCODING_AES_KEY": DEVELOPMENT_AES_KEY})
    # Left in an accept list by a rotation, a published value verifies forged callbacks too.
    with pytest.raises(ConfigError, match="WECHAT_ACCEPT_TOKENS"):
        Settings.from_env({**prod, "WECHAT_ACCEPT_TOKENS": f"older1,{DEVELOPMENT_TOKEN}"})
    with pytest.raises(ConfigError, match="WECHAT_ACCEPT_AES_KEYS"):
        Settings.from_env({**prod, "WECHAT_ACCEPT_AES_KEYS": DEVELOPMENT_AES_KEY})
    with pytest.raises(ConfigError, match="STRICT_WECHAT_VERIFY"):
        Settings.from_env({**prod, "STRICT_WECHAT_VERIFY": "0"})
    with pytest.raises(ConfigError, match="WECHAT_DEBUG_ENDPOINTS"):
        Settings.from_env({**prod, "WECHAT_DEBUG_ENDPOINTS": "1"})


def test_repr_hides_secrets():
    settings = Settings.from_env({**GOOD, "WECHAT_APPSECRET": "s3cr3t-app"})
    assert "tok123" not in repr(settings) and "s3cr3t-app" not in repr(settings)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("REDIS_URL", "http://:S3cretPass@redis:6379/0"),
        ("AI_API_URL", "ftp://svc:S3cretPass@ai-api:8000"),
        ("WECHAT_API_BASE", "api:S3cretPass@example"),
    ],
)
def test_a_bad_url_is_named_without_its_password(name, value):
    with pytest.raises(ConfigError, match=name) as caught:
        Settings.from_env({**GOOD, name: value})
    assert "S3cretPass" not in str(caught.value)


@pytest.mark.parametrize("level", ["debug", "INFO", "Warning", "ERROR", "CRITICAL"])
def test_log_level_takes_the_levels_both_services_share(level):
    """LOG_LEVEL is one variable for the gateway and the AI API: the same values work."""
    assert Settings.from_env({**GOOD, "LOG_LEVEL": level}).log_level == level.upper()
