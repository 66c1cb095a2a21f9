"""The AI API's one typed Settings: read once from the environment, validated at start-up."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

SERVICE_DIR = Path(__file__).resolve().parent.parent
DEFAULT_KB_DIR = SERVICE_DIR / "kb"
DEFAULT_REPLIES_FILE = SERVICE_DIR / "replies.toml"

DEFAULT_SYSTEM_PROMPT = (
    "你是微信公众号里的智能助手。用简洁、友好的中文回答，适合在手机聊天气泡里阅读："
    "不用 Markdown 标题、表格或代码块，能用三五句话说清就不写长文。"
    "优先依据下面给出的参考资料回答；资料里没有的内容，坦白说不知道，不要编造。"
)

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"Config '{name}' has value {raw!r}. Not a valid bool (true/false).")


def _parse_number(kind: Callable[[str], T]) -> Callable[[str, str], T]:
    def parse(name: str, raw: str) -> T:
        try:
            return kind(raw.strip())
        except ValueError:
            label = "integer" if kind is int else "number"
            raise ConfigError(f"Config '{name}' has value {raw!r}. Not a valid {label}.") from None

    return parse


def _parse_str(name: str, raw: str) -> str:
    # Mounted secrets and .env lines often end in a newline or a space; none is meant.
    return raw.strip()


def _parse_path(name: str, raw: str) -> Path:
    path = Path(raw.strip()).expanduser()
    # Relative paths are taken from the service folder, so `make run`, the Dockerfile and
    # the tests resolve them alike whatever their working directory.
    return path if path.is_absolute() else (SERVICE_DIR / path).resolve()


_PARSERS: dict[Any, Callable[[str, str], Any]] = {
    "bool": _parse_bool,
    "int": _parse_number(int),
    "float": _parse_number(float),
    "str": _parse_str,
    "Path": _parse_path,
}


@dataclass(frozen=True)
class Settings:
    """Everything the AI API can be told. Field names are the environment variables, lower-cased."""

    log_level: str = "INFO"
    log_format: str = "json"  # json | text

    kb_dir: Path = DEFAULT_KB_DIR
    kb_min_score: float = 0.25  # 0..1 share of the question's weight the best passage must match
    kb_reload_interval_s: float = 2.0  # how often KB_DIR is checked for changes
    replies_file: Path = DEFAULT_REPLIES_FILE

    llm_base_url: str = field(default="", repr=False)  # may carry a proxy's user:password@
    llm_api_key: str = field(default="", repr=False)
    llm_model: str = ""
    llm_timeout_s: float = 8.0
    llm_system_prompt: str = DEFAULT_SYSTEM_PROMPT
    llm_max_tokens: int = 800
    llm_temperature: float = 0.3
    llm_context_passages: int = 3

    memory_turns: int = 6
    memory_ttl_s: int = 1800
    parked_ttl_s: int = 1800
    local_store_max_users: int = 10000

    redis_url: str = field(default="", repr=False)  # may carry a password

    reply_deadline_ms: int = 4000  # used when the gateway sends no X-Reply-Deadline-Ms
    deadline_margin_ms: int = 150  # kept back from the deadline to build and send the answer

    def __post_init__(self) -> None:
        self._validate()

    @property
    def llm_configured(self) -> bool:
        return bool(self.llm_base_url and self.llm_api_key and self.llm_model)

    def _validate(self) -> None:
        self._validate_finite()
        self._validate_api_key()
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ConfigError(
                f"Config 'LOG_LEVEL' has value {self.log_level!r}. "
                "Use DEBUG, INFO, WARNING, ERROR or CRITICAL."
            )
        if self.log_format not in {"text", "json"}:
            raise ConfigError(
                f"Config 'LOG_FORMAT' has value {self.log_format!r}. Use text or json."
            )
        if not 0 <= self.kb_min_score <= 1:
            raise ConfigError(
                f"Config 'KB_MIN_SCORE' has value {self.kb_min_score!r}. Use a number from 0 to 1."
            )
        llm = {
            "LLM_BASE_URL": self.llm_base_url,
            "LLM_API_KEY": self.llm_api_key,
            "LLM_MODEL": self.llm_model,
        }
        given = [name for name, value in llm.items() if value]
        if given and len(given) != len(llm):
            missing = ", ".join(name for name, value in llm.items() if not value)
            raise ConfigError(
                f"Config {', '.join(given)} set but {missing} missing: set all three "
                "LLM variables to use an LLM, or none for the knowledge base only."
            )
        if self.llm_base_url and not self.llm_base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"Config 'LLM_BASE_URL' has value {url_for_logs(self.llm_base_url)!r}. "
                "Use an http(s) URL such as https://api.openai.com/v1."
            )
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("Config 'REDIS_URL' is not a redis://, rediss:// or unix:// URL.")
        positive = {
            "LLM_TIMEOUT": self.llm_timeout_s,
            "LLM_MAX_TOKENS": self.llm_max_tokens,
            "MEMORY_TTL_S": self.memory_ttl_s,
            "PARKED_TTL_S": self.parked_ttl_s,
            "LOCAL_STORE_MAX_USERS": self.local_store_max_users,
            "REPLY_DEADLINE_MS": self.reply_deadline_ms,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"Config '{name}' has value {value!r}. It must be above 0.")
        not_negative = {
            "KB_RELOAD_INTERVAL_S": self.kb_reload_interval_s,
            "LLM_CONTEXT_PASSAGES": self.llm_context_passages,
            "MEMORY_TURNS": self.memory_turns,
            "DEADLINE_MARGIN_MS": self.deadline_margin_ms,
            "LLM_TEMPERATURE": self.llm_temperature,
        }
        for name, value in not_negative.items():
            if value < 0:
                raise ConfigError(f"Config '{name}' has value {value!r}. It must not be negative.")
        if self.llm_temperature > MAX_TEMPERATURE:
            # OpenAI's API refuses it (HTTP 400 on every call) and other servers turn out
            # gibberish: either way every answer would fall back to the knowledge base.
            raise ConfigError(
                f"Config 'LLM_TEMPERATURE' has value {self.llm_temperature!r}. "
                f"It must be between 0 and {MAX_TEMPERATURE}."
            )

    def _validate_finite(self) -> None:
        """nan passes every comparison below and inf is no timeout or interval at all."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(
                    f"Config '{env_name(f.name)}' has value {value!r}. Not a finite number."
                )

    def _validate_api_key(self) -> None:
        """The key goes into an HTTP header: anything but printable ASCII (a pasted
        non-ASCII character, a line break) fails every call, or start-up, obscurely."""
        for position, char in enumerate(self.llm_api_key, 1):
            if not (char.isascii() and char.isprintable()):
                # The key itself is never printed, only where the bad character is.
                raise ConfigError(
                    f"Config 'LLM_API_KEY' has a character that is not printable ASCII "
                    f"(character {position} of {len(self.llm_api_key)})."
                )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build Settings from environment variables (the real environment by default)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = env_name(f.name)
            if not environ.get(name, "").strip():
                continue  # unset or empty (a blank line in .env): the default
            type_name = f.type if isinstance(f.type, str) else f.type.__name__
            values[f.name] = _PARSERS[type_name](name, environ[name])
        return cls(**values)


MAX_TEMPERATURE = 2.0  # the chat-completions API's upper bound

# Environment names that differ from the upper-cased field name.
ENV_NAMES = {"llm_timeout_s": "LLM_TIMEOUT"}


def url_for_logs(url: str) -> str:
    """`url` without user:password@, query and fragment: credentials travel in them
    (a proxy's login, an ?api-key=), and logs and error messages must not carry them."""
    try:
        parts = urlsplit(url)
    except ValueError:  # a malformed host ("http://[x"): nothing of it is worth the risk
        return "(unparsable URL)"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def env_name(field_name: str) -> str:
    """The environment variable that sets a Settings field."""
    return ENV_NAMES.get(field_name, field_name.upper())
