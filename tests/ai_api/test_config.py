"""Settings from the environment: defaults, parsing, and start-up errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from celestial_nexus.api import create_app
from celestial_nexus.config import DEFAULT_KB_DIR, SERVICE_DIR, ConfigError, Settings


def test_defaults_need_no_environment():
    settings = Settings.from_env({})
    assert settings.kb_dir == DEFAULT_KB_DIR and DEFAULT_KB_DIR.is_dir()
    assert settings.replies_file.is_file()
    assert settings.llm_configured is False
    assert settings.redis_url == ""


def test_values_are_parsed_and_relative_paths_resolve_from_the_service_folder():
    settings = Settings.from_env(
        {
            "KB_DIR": "kb",
            "KB_MIN_SCORE": "0.4",
            "LLM_BASE_URL": "https://llm.example/v1",
            "LLM_API_KEY": "sk-x",
            "LLM_MODEL": "m",
            "LLM_TIMEOUT": "3.5",
            "MEMORY_TURNS": "4",
            "REDIS_URL": "redis://127.0.0.1:6379/0",
            "LOG_FORMAT": "json",
        }
    )
    assert settings.kb_dir == SERVICE_DIR / "kb"
    assert settings.kb_min_score == 0.4
    assert settings.llm_timeout_s == 3.5 and settings.memory_turns == 4
    assert settings.llm_configured


def test_temperature_reaches_the_apis_bounds():
    assert Settings.from_env({"LLM_TEMPERATURE": "0"}).llm_temperature == 0
    assert Settings.from_env({"LLM_TEMPERATURE": "2"}).llm_temperature == 2


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"MEMORY_TURNS": "six"}, "MEMORY_TURNS"),
        ({"LLM_TIMEOUT": "fast"}, "LLM_TIMEOUT"),
        ({"LLM_TIMEOUT": "0"}, "LLM_TIMEOUT"),
        ({"KB_MIN_SCORE": "1.5"}, "KB_MIN_SCORE"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"LLM_BASE_URL": "https://x/v1"}, "LLM_API_KEY, LLM_MODEL missing"),
        ({"LLM_BASE_URL": "x", "LLM_API_KEY": "k", "LLM_MODEL": "m"}, "LLM_BASE_URL"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL"),
        ({"MEMORY_TTL_S": "-1"}, "MEMORY_TTL_S"),
        ({"LLM_TIMEOUT": "nan"}, "'LLM_TIMEOUT' has value nan. Not a finite number"),
        ({"LLM_TIMEOUT": "inf"}, "LLM_TIMEOUT"),
        ({"LLM_TEMPERATURE": "nan"}, "LLM_TEMPERATURE"),
        ({"LLM_TEMPERATURE": "5"}, "'LLM_TEMPERATURE' has value 5.0. It must be between 0 and 2"),
        ({"LLM_TEMPERATURE": "-0.1"}, "LLM_TEMPERATURE"),
        ({"KB_RELOAD_INTERVAL_S": "nan"}, "KB_RELOAD_INTERVAL_S"),
        ({"KB_RELOAD_INTERVAL_S": "inf"}, "KB_RELOAD_INTERVAL_S"),
        ({"KB_MIN_SCORE": "-inf"}, "KB_MIN_SCORE"),
    ],
)
def test_bad_values_stop_start_up_naming_the_variable(env, named):
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(env)


def test_missing_kb_dir_and_bad_replies_file_stop_start_up(tmp_path: Path):
    with pytest.raises(ConfigError, match="KB_DIR"):
        create_app(Settings(kb_dir=tmp_path / "nope"))
    bad = tmp_path / "replies.toml"
    bad.write_text('welcome = "hi"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"REPLIES_FILE.*missing help"):
        create_app(Settings(replies_file=bad))


def test_api_key_is_not_in_the_repr():
    settings = Settings(
        llm_base_url="https://proxy-user:proxy-pw@x/v1",
        llm_api_key="sk-very-secret",
        llm_model="m",
        redis_url="redis://:pw@h:6379/0",
    )
    assert "sk-very-secret" not in repr(settings)
    assert ":pw@" not in repr(settings)
    assert "proxy-pw" not in repr(settings)


def test_strings_are_trimmed_as_mounted_secrets_end_in_a_newline():
    settings = Settings.from_env(
        {
            "LLM_BASE_URL": " https://llm.example/v1\n",
            "LLM_API_KEY": "sk-from-a-secret-file\n",
            "LLM_MODEL": "m ",
            "REDIS_URL": "redis://127.0.0.1:6379/0\r\n",
        }
    )
    assert settings.llm_base_url == "https://llm.example/v1"
    assert settings.llm_api_key == "sk-from-a-secret-file"
    assert settings.llm_model == "m"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize("key", ["sk-schlüssel", "sk-abc\n", "sk-\u200babc", "sk-　abc"])
def test_an_api_key_must_be_printable_ascii(key):
    with pytest.raises(ConfigError, match="'LLM_API_KEY' has a character") as info:
        Settings(llm_base_url="https://x/v1", llm_api_key=key, llm_model="m")
    assert "sk-" not in str(info.value)  # the key is not printed


def test_a_non_ascii_api_key_stops_start_up_naming_the_variable():
    env = {"LLM_BASE_URL": "https://x/v1", "LLM_API_KEY": "sk-schlüssel", "LLM_MODEL": "m"}
    with pytest.raises(ConfigError, match="LLM_API_KEY"):
        create_app(Settings.from_env(env))


def test_the_llm_url_is_logged_and_named_without_credentials(capfd):
    url = "https://proxyuser:Pr0xyPassw0rd@llm.example.internal:8443/v1?api-key=sk-in-query#x"
    settings = Settings(
        llm_base_url=url, llm_api_key="sk-key", llm_model="m", log_level="INFO", log_format="json"
    )
    with TestClient(create_app(settings)):
        pass
    err = capfd.readouterr().err
    assert "m at https://llm.example.internal:8443/v1" in err
    assert "Pr0xyPassw0rd" not in err and "proxyuser" not in err and "sk-in-query" not in err
    with pytest.raises(ConfigError, match="LLM_BASE_URL") as info:
        Settings(llm_base_url="ftp://proxyuser:Pr0xyPassw0rd@h/v1", llm_api_key="k", llm_model="m")
    assert "Pr0xyPassw0rd" not in str(info.value) and "'ftp://h/v1'" in str(info.value)
