"""The relay's settings, read once from the environment and validated at start-up."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    wecom_webhook_url: str
    host: str = "127.0.0.1"
    port: int = 9095
    runbook_base_url: str = ""
    send_timeout_s: float = 10.0

    def __repr__(self) -> str:
        # The webhook URL carries the robot's key: never let it reach a log line.
        return (
            f"Settings(host={self.host!r}, port={self.port}, runbook_base_url="
            f"{self.runbook_base_url!r}, send_timeout_s={self.send_timeout_s})"
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        url = env.get("ALERT_WECOM_WEBHOOK_URL", "").strip()
        if not url:
            raise ConfigError(
                "ALERT_WECOM_WEBHOOK_URL is not set: give the WeCom group robot's webhook URL "
                "(https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=...)"
            )
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ConfigError("ALERT_WECOM_WEBHOOK_URL is not an http(s) URL")
        runbook = env.get("RUNBOOK_BASE_URL", "").strip()
        if runbook and urlsplit(runbook).scheme not in {"http", "https"}:
            raise ConfigError(f"RUNBOOK_BASE_URL has value {runbook!r}. Not an http(s) URL.")
        return cls(
            wecom_webhook_url=url,
            host=env.get("ALERT_RELAY_HOST", cls.host),
            port=int(_positive(env, "ALERT_RELAY_PORT", cls.port, integer=True)),
            runbook_base_url=runbook,
            send_timeout_s=_positive(env, "ALERT_RELAY_SEND_TIMEOUT_S", cls.send_timeout_s),
        )


def _positive(env: Mapping[str, str], name: str, default: float, *, integer: bool = False) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        kind = "integer" if integer else "number"
        raise ConfigError(f"{name} has value {raw!r}. Not a valid {kind}.") from None
    if value <= 0:
        raise ConfigError(f"{name} has value {raw!r}. Must be above 0.")
    return value
