"""`make check-endpoint` signs with the values the gateway runs with, the environment first."""

from __future__ import annotations

import pytest

from scripts import check_endpoint
from scripts.refuse_dev_secrets import example_values
from scripts.run_local import ROOT, local_environment

DEV = example_values(ROOT / ".env.example")


@pytest.fixture
def no_wechat_env(monkeypatch):
    for name in DEV:
        monkeypatch.delenv(name, raising=False)


def test_without_env_file_it_signs_as_make_run_does(no_wechat_env):
    """A fresh clone: the development values of .env.example, named as such."""
    assert check_endpoint.checker_environment("") == local_environment()
    env, from_example = local_environment()
    assert env["WECHAT_TOKEN"] == example_values(ROOT / ".env").get(
        "WECHAT_TOKEN", DEV["WECHAT_TOKEN"]
    )
    assert ("WECHAT_TOKEN" in from_example) == ("WECHAT_TOKEN" not in example_values(ROOT / ".env"))


def test_env_file_values_yield_to_the_environment(no_wechat_env, monkeypatch, tmp_path):
    env_file = tmp_path / "prod.env"
    env_file.write_text("WECHAT_TOKEN=from_file\nWECHAT_APPID=wxfile\n", encoding="utf-8")
    monkeypatch.setenv("WECHAT_TOKEN", "from_env")
    env, from_example = check_endpoint.checker_environment(str(env_file))
    assert (env["WECHAT_TOKEN"], env["WECHAT_APPID"], from_example) == ("from_env", "wxfile", [])
    assert "WECHAT_ENCODING_AES_KEY" not in env  # never the development values for ENV_FILE


def test_an_unreadable_env_file_stops_the_check(tmp_path):
    with pytest.raises(SystemExit, match=r"ENV_FILE=.* is not a readable file"):
        check_endpoint.checker_environment(str(tmp_path / "missing.env"))
