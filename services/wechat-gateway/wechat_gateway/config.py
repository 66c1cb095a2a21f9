"""Typed settings of the gateway, read once from the environment and validated at start-up.

A bad value stops start-up with a message that names the variable (Starlette's habit), so
an operator learns about a mistyped AES key from `docker compose up`, not from a user.
One account's secrets live in `AccountSettings`: the verification and crypto code receive
that object, so serving several Official Accounts later is a routing change.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from .crypto import MessageCipher, decode_aes_key
from .errors import ConfigError

SLOW_REPLY_MODES = ("retry", "custom", "off")
LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEPLOY_ENVS = ("development", "production")

# The values shipped in .env.example: `make run` uses them on a fresh clone,
# production refuses them.
DEVELOPMENT_TOKEN = "celestial-dev-token"  # noqa: S105 - a published development value
DEVELOPMENT_AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
DEFAULT_FALLBACK_REPLY = "抱歉，服务暂时繁忙，请稍后再试。"
DEFAULT_PLACEHOLDER = "正在思考，请稍后发送任意消息获取回复。"
# WeChat asks for 3-32 letters or digits; we only refuse what cannot work in a comma list.
_TOKEN_PATTERN = re.compile(r"^[^\s,]{3,64}$")
_URL_USERINFO = re.compile(r"^((?:[A-Za-z][A-Za-z0-9+.-]*://)?)[^@/]*@")


@dataclass(frozen=True)
class AccountSettings:
    """What identifies and authenticates one Official Account.

    `accepted_tokens` holds the current token first, then the ones still accepted during a
    rotation; `aes_keys` the current key first, then previous keys tried for decryption.
    A reply is sealed with the token and key its request was opened with, so a WeChat
    still using the old pair during a rotation can read it.
    """

    appid: str
    accepted_tokens: tuple[str, ...]
    aes_keys: tuple[bytes, ...] = ()

    @property
    def token(self) -> str:
        return self.accepted_tokens[0]

    @property
    def encryption_enabled(self) -> bool:
        return bool(self.aes_keys)

    @functools.cached_property
    def ciphers(self) -> tuple[MessageCipher, ...]:
        """One cipher per key, in `aes_keys` order, built once: each keeps its AES state."""
        return tuple(MessageCipher(key, self.appid) for key in self.aes_keys)

    def __repr__(self) -> str:  # never let a secret reach a log through repr()
        return (
            f"AccountSettings(appid={self.appid!r}, tokens={len(self.accepted_tokens)}, "
            f"aes_keys={len(self.aes_keys)})"
        )


@dataclass(frozen=True)
class Settings:
    account: AccountSettings
    strict_verify: bool = True
    max_clock_skew_s: int = 300
    max_body_bytes: int = 64 * 1024
    dedup_window_s: int = 120
    dedup_max: int = 500
    redis_url: str | None = None
    ai_api_url: str | None = "http://127.0.0.1:8000"
    reply_budget_s: float = 4.5
    fallback_reply: str = DEFAULT_FALLBACK_REPLY
    slow_reply_mode: str = "retry"
    retry_hold_s: float = 5.5
    delivery_window_s: float = 14.0
    custom_window_s: float = 60.0
    late_answer_timeout_s: float = 60.0
    placeholder_reply: str = DEFAULT_PLACEHOLDER
    parked_ttl_s: int = 86400
    max_attempts: int = 3
    job_lease_s: float = 3.0
    appsecret: str | None = field(default=None, repr=False)
    api_base: str = "https://api.weixin.qq.com"
    debug_endpoints: bool = False
    log_level: str = "INFO"
    log_format: str = "json"
    deploy_env: str = "development"
    uses_development_defaults: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Build and validate settings from environment variables; raise ConfigError."""
        return _SettingsReader(environ).read()


class _SettingsReader:
    """Reads one variable at a time so every error names the variable and the bad value."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.env = environ

    def raw(self, name: str) -> str | None:
        value = self.env.get(name)
        return value.strip() if value is not None and value.strip() != "" else None

    def text(self, name: str, default: str | None = None) -> str | None:
        value = self.raw(name)
        return default if value is None else value

    def required(self, name: str) -> str:
        value = self.raw(name)
        if value is None:
            raise ConfigError(f"{name} is required but not set (see .env.example)")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{name} has value {value!r}: not a valid boolean (use 1 or 0)")

    def number(self, name: str, default: float, *, minimum: float, integer: bool = False):
        value = self.raw(name)
        if value is None:
            return default
        try:
            parsed = int(value) if integer else float(value)
        except ValueError:
            kind = "an integer" if integer else "a number"
            raise ConfigError(f"{name} has value {value!r}: not {kind}") from None
        if parsed < minimum:
            raise ConfigError(f"{name} has value {value!r}: must be at least {minimum}")
        return parsed

    def choice(self, name: str, default: str, choices: tuple[str, ...], *, upper=False) -> str:
        value = self.raw(name)
        if value is None:
            return default
        value = value.upper() if upper else value.lower()
        if value not in choices:
            raise ConfigError(f"{name} has value {value!r}: must be one of {', '.join(choices)}")
        return value

    def url(self, name: str, default: str | None) -> str | None:
        value = self.text(name, default)
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ConfigError(f"{name} has value {redacted_url(value)!r}: not an http(s) URL")
        return value.rstrip("/") if value else value

    def tokens(self) -> tuple[str, ...]:
        current = self.required("WECHAT_TOKEN")
        others = self._listed("WECHAT_ACCEPT_TOKENS")
        tokens = tuple(dict.fromkeys([current, *[t for t in others if t]]))
        for position, token in enumerate(tokens):
            if not _TOKEN_PATTERN.match(token):
                name = "WECHAT_TOKEN" if position == 0 else "WECHAT_ACCEPT_TOKENS"
                raise ConfigError(
                    f"{name} holds a token of {len(token)} characters: the WeChat console "
                    "takes 3-32 letters or digits (3-64 characters without spaces or commas "
                    "are accepted here)"
                )
        return tokens

    def aes_keys(self) -> tuple[bytes, ...]:
        current = self.raw("WECHAT_ENCODING_AES_KEY")
        previous = self._listed("WECHAT_ACCEPT_AES_KEYS")
        if current is None:
            if any(previous):
                raise ConfigError(
                    "WECHAT_ACCEPT_AES_KEYS is set but WECHAT_ENCODING_AES_KEY is not: "
                    "set the current key"
                )
            return ()
        keys = []
        for name, value in [("WECHAT_ENCODING_AES_KEY", current)] + [
            ("WECHAT_ACCEPT_AES_KEYS", k) for k in previous if k
        ]:
            try:
                keys.append(decode_aes_key(value))
            except ValueError as exc:
                raise ConfigError(f"{name}: {exc}") from None
        return tuple(dict.fromkeys(keys))

    def read(self) -> Settings:
        aes_keys = self.aes_keys()
        appid = self.text("WECHAT_APPID", "") or ""
        if aes_keys and not appid:
            raise ConfigError(
                "WECHAT_APPID is required when WECHAT_ENCODING_AES_KEY is set: "
                "decrypted messages are checked against it"
            )
        account = AccountSettings(appid=appid, accepted_tokens=self.tokens(), aes_keys=aes_keys)
        settings = Settings(
            account=account,
            strict_verify=self.boolean("STRICT_WECHAT_VERIFY", True),
            max_clock_skew_s=self.number("WECHAT_MAX_CLOCK_SKEW", 300, minimum=0, integer=True),
            max_body_bytes=self.number("WECHAT_MAX_BODY_BYTES", 65536, minimum=1024, integer=True),
            dedup_window_s=self.number("WECHAT_DEDUP_WINDOW", 120, minimum=1, integer=True),
            dedup_max=self.number("WECHAT_DEDUP_MAX", 500, minimum=1, integer=True),
            redis_url=self.redis_url(),
            ai_api_url=self.url("AI_API_URL", "http://127.0.0.1:8000"),
            reply_budget_s=self.number("WECHAT_REPLY_BUDGET", 4.5, minimum=0.1),
            fallback_reply=self.text("WECHAT_FALLBACK_REPLY", DEFAULT_FALLBACK_REPLY) or "",
            slow_reply_mode=self.choice("WECHAT_SLOW_REPLY_MODE", "retry", SLOW_REPLY_MODES),
            retry_hold_s=self.number("WECHAT_RETRY_HOLD", 5.5, minimum=0.1),
            delivery_window_s=self.number("WECHAT_DELIVERY_WINDOW", 14.0, minimum=0.1),
            custom_window_s=self.number("WECHAT_CUSTOM_WINDOW", 60.0, minimum=0.1),
            late_answer_timeout_s=self.number("WECHAT_LATE_ANSWER_TIMEOUT", 60.0, minimum=0.1),
            placeholder_reply=self.text("WECHAT_PLACEHOLDER_REPLY", DEFAULT_PLACEHOLDER) or "",
            parked_ttl_s=self.number("WECHAT_PARKED_TTL", 86400, minimum=1, integer=True),
            appsecret=self.raw("WECHAT_APPSECRET"),
            api_base=self.url("WECHAT_API_BASE", "https://api.weixin.qq.com") or "",
            debug_endpoints=self.boolean("WECHAT_DEBUG_ENDPOINTS", False),
            log_level=self.choice("LOG_LEVEL", "INFO", LOG_LEVELS, upper=True),
            log_format=self.choice("LOG_FORMAT", "json", LOG_FORMATS),
            deploy_env=self.choice("DEPLOY_ENV", "development", DEPLOY_ENVS),
            uses_development_defaults=self.uses_development_values(),
        )
        _check_consistency(settings)
        return settings

    def redis_url(self) -> str | None:
        value = self.raw("REDIS_URL")
        if value is not None and not re.match(r"^(redis|rediss|unix)://", value):
            raise ConfigError(
                f"REDIS_URL has value {redacted_url(value)!r}: "
                "must start with redis://, rediss:// or unix://"
            )
        return value

    def uses_development_values(self) -> bool:
        """Whether a published .env.example token or AES key is accepted, current or kept
        for rotation: one left in WECHAT_ACCEPT_TOKENS verifies a forged callback as well."""
        tokens = [self.raw("WECHAT_TOKEN"), *self._listed("WECHAT_ACCEPT_TOKENS")]
        keys = [self.raw("WECHAT_ENCODING_AES_KEY"), *self._listed("WECHAT_ACCEPT_AES_KEYS")]
        return DEVELOPMENT_TOKEN in tokens or DEVELOPMENT_AES_KEY in keys

    def _listed(self, name: str) -> list[str]:
        return [item.strip() for item in (self.raw(name) or "").split(",")]


def redacted_url(url: str) -> str:
    """`url` with the user and password part starred: a start-up error prints the URL."""
    return _URL_USERINFO.sub(r"\1***@", url)


def _longest_job(settings: Settings) -> tuple[float, str]:
    """How long a job may wait for the AI's answer in this slow-reply mode, and the setting."""
    if settings.slow_reply_mode == "custom":
        return settings.custom_window_s, "WECHAT_CUSTOM_WINDOW"
    if settings.slow_reply_mode == "retry":
        return max(
            (settings.delivery_window_s, "WECHAT_DELIVERY_WINDOW"),
            (settings.late_answer_timeout_s, "WECHAT_LATE_ANSWER_TIMEOUT"),
        )
    return settings.reply_budget_s, "WECHAT_REPLY_BUDGET"


def _check_consistency(settings: Settings) -> None:
    """Rules that involve several variables."""
    if settings.reply_budget_s >= 5:
        raise ConfigError(
            f"WECHAT_REPLY_BUDGET is {settings.reply_budget_s}: WeChat drops the connection "
            "at 5 s, keep it below (4.5 is the default)"
        )
    if settings.retry_hold_s <= 5:
        raise ConfigError(
            f"WECHAT_RETRY_HOLD is {settings.retry_hold_s}: a held attempt must outlast "
            "WeChat's 5 s cut, or WeChat gets its 503 and shows the user "
            "'该公众号暂时无法提供服务'; keep it above 5 (5.5 is the default)"
        )
    if settings.dedup_window_s < 20:
        raise ConfigError(
            f"WECHAT_DEDUP_WINDOW is {settings.dedup_window_s}: it must outlive WeChat's "
            "~15 s of retries (use at least 20; 120 is the default)"
        )
    job_life_s, setting = _longest_job(settings)
    if settings.dedup_window_s < job_life_s + 5:
        raise ConfigError(
            f"WECHAT_DEDUP_WINDOW is {settings.dedup_window_s}: a job may wait {job_life_s:g} s "
            f"for its answer ({setting}), and the answer must find the job still there "
            f"(use at least {math.ceil(job_life_s) + 5})"
        )
    if settings.slow_reply_mode == "custom" and not (settings.account.appid and settings.appsecret):
        raise ConfigError(
            "WECHAT_SLOW_REPLY_MODE=custom needs WECHAT_APPID and WECHAT_APPSECRET "
            "to fetch the access_token of the customer-service API"
        )
    if settings.deploy_env == "production":
        if settings.uses_development_defaults:
            raise ConfigError(
                "DEPLOY_ENV=production refuses the development token or AES key from "
                ".env.example in WECHAT_TOKEN / WECHAT_ENCODING_AES_KEY or in "
                "WECHAT_ACCEPT_TOKENS / WECHAT_ACCEPT_AES_KEYS: set the values of your account"
            )
        if not settings.strict_verify:
            raise ConfigError("DEPLOY_ENV=production requires STRICT_WECHAT_VERIFY=1")
        if settings.debug_endpoints:
            raise ConfigError("DEPLOY_ENV=production requires WECHAT_DEBUG_ENDPOINTS=0")
