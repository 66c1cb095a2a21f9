"""The call to an OpenAI-compatible chat-completions endpoint, and the prompt it gets.

Any failure is raised as LLMError with a reason from a fixed set (timeout, http_error,
malformed, refusal, connection), so the answerer can fall back to the knowledge base and
count why. The API key is sent as a Bearer token and never logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from .kb import Hit
from .memory import Turn

log = logging.getLogger(__name__)

ERROR_REASONS = ("timeout", "http_error", "malformed", "refusal", "connection")


class LLMError(Exception):
    """The LLM gave no usable answer; `reason` is one of ERROR_REASONS."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class LLMConfig:
    base_url: str
    api_key: str
    model: str
    timeout_s: float
    max_tokens: int
    temperature: float


def build_messages(
    system_prompt: str, passages: Sequence[Hit], history: Sequence[Turn], question: str
) -> list[dict[str, str]]:
    """System prompt with the retrieved passages, then the remembered turns, then the question."""
    if passages:
        refs = "\n\n".join(
            f"[{i}] {hit.passage.title}\n{hit.passage.body}" for i, hit in enumerate(passages, 1)
        )
        system = f"{system_prompt}\n\n参考资料：\n{refs}"
    else:
        system = f"{system_prompt}\n\n参考资料：（知识库里没有找到相关内容）"
    messages = [{"role": "system", "content": system}]
    messages += [{"role": turn.role, "content": turn.content} for turn in history]
    messages.append({"role": "user", "content": question})
    return messages


class LLMClient:
    """POST {base_url}/chat/completions with one shared httpx connection pool."""

    def __init__(self, config: LLMConfig, transport: httpx.AsyncBaseTransport | None = None):
        self.config = config
        self._http = httpx.AsyncClient(
            base_url=config.base_url.rstrip("/") + "/",
            headers={"Authorization": f"Bearer {config.api_key}"},
            timeout=config.timeout_s,
            transport=transport,
        )

    async def complete(self, messages: list[dict[str, str]], timeout_s: float) -> str:
        """The assistant's text; raises LLMError. `timeout_s` caps the whole call."""
        body = {
            "model": self.config.model,
            "messages": messages,
            "max_tokens": self.config.max_tokens,
            "temperature": self.config.temperature,
        }
        try:
            # httpx times each read; asyncio.timeout caps the whole call, trickling included.
            async with asyncio.timeout(timeout_s):
                response = await self._http.post(
                    "chat/completions", json=body, timeout=httpx.Timeout(timeout_s)
                )
        except (httpx.TimeoutException, TimeoutError) as exc:
            raise LLMError("timeout", type(exc).__name__) from None
        except httpx.HTTPError as exc:
            raise LLMError("connection", type(exc).__name__) from None
        if response.status_code != 200:
            raise LLMError("http_error", f"HTTP {response.status_code}")
        return _answer_text(response)

    async def close(self) -> None:
        await self._http.aclose()


def _answer_text(response: httpx.Response) -> str:
    try:
        data = response.json()
        choice = data["choices"][0]
        message = choice["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise LLMError("malformed", "no choices[0].message") from None
    if not isinstance(message, dict):
        raise LLMError("malformed", "message is not an object")
    if message.get("refusal") or choice.get("finish_reason") == "content_filter":
        raise LLMError("refusal")
    content = message.get("content")
    if not isinstance(content, str) or not content.strip():
        raise LLMError("malformed", "empty content")
    answer = without_reasoning(content).strip()
    if not answer:
        raise LLMError("malformed", "reasoning only, no answer")
    return answer


_OPEN, _CLOSE = "<think>", "</think>"


def without_reasoning(content: str) -> str:
    """The answer without the model's chain of thought.

    Reasoning models served by OpenAI-compatible servers (DeepSeek-R1 or Qwen3 on vLLM,
    Ollama and many gateways) can start their content with their thinking between <think>
    tags. A WeChat user must not get it as the answer, and memory must not feed it back in
    the next prompt. Two broken shapes are common too: a chat template that opened the tag
    itself, so the content is 'thinking</think>answer', and an answer cut off by max_tokens
    while still thinking: '<think>' and no close, nothing to answer with. Only a block at
    the start counts: an answer that mentions the tag (HTML 没有 <think> 标签) is left alone.
    """
    lowered = content.lower()
    closing = lowered.find(_CLOSE)
    if lowered.lstrip().startswith(_OPEN):
        return "" if closing == -1 else content[closing + len(_CLOSE) :]
    if closing != -1 and _OPEN not in lowered[:closing]:  # the template opened the block
        return content[closing + len(_CLOSE) :]
    return content
