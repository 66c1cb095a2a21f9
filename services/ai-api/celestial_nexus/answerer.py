"""What the bot says to each message: commands, events, acknowledgements, KB and LLM answers.

The rules (issue 3): text and recognised voice go to the answerer (the LLM when one is
configured and there is time, else the knowledge base); voice without recognition asks
the user to type; images, links, videos and locations get an acknowledgement; events get a
welcome, a menu reply, or nothing, and `LOCATION`/`VIEW` never reach an LLM; unsubscribe
erases the user's data. Long answers go out in parts, the rest parked for `继续`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import unicodedata
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from . import metrics
from .chat_text import markdown_to_plain, split_text, utf8_len
from .config import Settings
from .kb import Hit, LiveKnowledgeBase
from .llm import LLMClient, LLMError, build_messages
from .memory import ConversationMemory, ParkedParts, forget_user
from .replies import ReplyTexts
from .schemas import MAX_TEXT_BYTES, NormalizedMessage, Reply, TextReply
from .store import Store

log = logging.getLogger(__name__)

COMMANDS = {
    "help": {"帮助", "help", "/help", "菜单"},
    "reset": {"清除记忆", "/reset", "清空记忆", "reset"},
    "continue": {"继续", "/continue", "continue", "more"},
}
# Around a command, what users type or copy from the hint (回复「继续」): spaces, brackets,
# quotes and end punctuation. Full-width letters (ＨＥＬＰ) are folded by NFKC first.
_COMMAND_NOISE = re.compile(r"[\s。.!?！？~～「」『』【】\[\]“”\"'‘’()（）]+")
MIN_LLM_BUDGET_S = 0.3  # below this, asking the LLM cannot pay off: answer from the KB
# The knowledge base is searched with the question's beginning only: segmenting costs
# about 2 ms per 100 characters of unpunctuated Chinese, on the event loop.
SEARCH_CHARS = 500
# An answer goes out in at most this many parts (the first, then 继续 ...); the rest is cut.
# A huge knowledge-base passage would otherwise park megabytes per user.
MAX_ANSWER_PARTS = 20
# Storing an answer is awaited at least this long, even when the deadline margin has begun:
# a healthy store takes about a millisecond, and the next message then finds what it stored.
MIN_STORE_WAIT_S = 0.01
KNOWN_TYPES = {"text", "image", "voice", "video", "shortvideo", "location", "link", "event"}


def command_of(text: str) -> str | None:
    """'help', 'reset', 'continue' or None, ignoring case, width, spaces, brackets, quotes
    and end punctuation: 「继续」, 继续？ and ＨＥＬＰ are the commands they look like."""
    word = _COMMAND_NOISE.sub("", unicodedata.normalize("NFKC", text)).lower()
    for command, words in COMMANDS.items():
        if word in words:
            return command
    return None


@dataclass(frozen=True)
class Answer:
    reply: Reply | None
    answerer: str  # kb, llm, command, event, static
    outcome: str  # answered, no_answer, no_reply


class Answerer:
    """Decides the reply to one normalized message before its deadline."""

    def __init__(
        self,
        settings: Settings,
        kb: LiveKnowledgeBase,
        texts: ReplyTexts,
        store: Store,
        llm: LLMClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.kb = kb
        self.texts = texts
        self.store = store
        self.llm = llm
        self.clock = clock
        self.memory = ConversationMemory(store, settings.memory_turns, settings.memory_ttl_s)
        self.parked = ParkedParts(store, settings.parked_ttl_s)
        longest_hint = utf8_len(texts.continue_hint.format(remaining=MAX_ANSWER_PARTS - 1))
        self.part_bytes = MAX_TEXT_BYTES - longest_hint - 2  # 2: the blank line before the hint
        self._late_writes: set[asyncio.Task[None]] = set()

    async def answer(
        self, msg: NormalizedMessage, deadline_at: float, whole: bool = False
    ) -> Answer:
        """The reply to `msg`. `whole` returns a long answer entire instead of in parts
        (the gateway's customer-service push splits it into several messages itself)."""
        kind = msg.type
        if kind == "text":
            return await self._text(msg.openid, msg.content or "", deadline_at, whole)
        if kind == "voice":
            if msg.recognition and msg.recognition.strip():
                return await self._text(msg.openid, msg.recognition, deadline_at, whole)
            return self._static(self.texts.voice_unrecognized)
        if kind == "event":
            return await self._event(msg)
        if kind == "image":
            return self._static(self.texts.image)
        if kind == "link":
            title = (msg.title or msg.url or "").strip() or "链接"
            return self._static(self.texts.link.format(title=title[:100]))
        if kind in {"video", "shortvideo"}:
            return self._static(self.texts.video)
        if kind == "location":
            label = (msg.label or "").strip() or "未知地点"
            return self._static(self.texts.location.format(label=label[:100]))
        return self._static(self.texts.unsupported)

    @staticmethod
    def _static(text: str) -> Answer:
        return Answer(TextReply(content=text), "static", "answered")

    async def _event(self, msg: NormalizedMessage) -> Answer:
        event = (msg.event or "").lower()
        key = (msg.event_key or "").strip()
        reply: Reply | None = None
        if event == "subscribe":
            scene = key.removeprefix("qrscene_") if key.startswith("qrscene_") else ""
            reply = TextReply(content=self.texts.scan_welcome.get(scene, self.texts.welcome))
        elif event == "scan" and key:
            reply = TextReply(content=self.texts.scan_welcome.get(key, self.texts.welcome))
        elif event == "unsubscribe":
            await forget_user(self.store, msg.openid)
            log.info("erased the state of a user who unsubscribed")
        elif event == "click":
            reply = self.texts.click.get(key)
            if reply is None:
                log.warning("no reply configured for menu key %r (add it to [click])", key)
        # LOCATION, VIEW and every other event: nothing to say, and no LLM call.
        return Answer(reply, "event", "answered" if reply else "no_reply")

    async def _text(self, openid: str, text: str, deadline_at: float, whole: bool) -> Answer:
        text = text.strip()
        command = command_of(text) if text else "help"
        if command == "help":
            return Answer(TextReply(content=self.texts.help), "command", "answered")
        if command == "reset":
            await self.memory.clear(openid)
            await self.parked.clear(openid)
            return Answer(TextReply(content=self.texts.memory_cleared), "command", "answered")
        if command == "continue":
            part, remaining = await self.parked.next(openid)
            if part is None:
                return Answer(
                    TextReply(content=self.texts.nothing_to_continue), "command", "answered"
                )
            return Answer(
                TextReply(content=self._with_hint(part, remaining)), "command", "answered"
            )
        return await self._question(openid, text, deadline_at, whole)

    async def _question(
        self, openid: str, question: str, deadline_at: float, whole: bool
    ) -> Answer:
        kb = self.kb.current
        k = max(1, self.settings.llm_context_passages) if self.llm else 1
        hits = kb.search(question[:SEARCH_CHARS], k=k)
        best = hits[0] if hits and hits[0].confidence >= self.settings.kb_min_score else None
        answer_text: str | None = None
        answerer = "kb"
        if self.llm is not None:
            answer_text = await self._ask_llm(openid, question, hits, deadline_at)
            if answer_text is not None:
                answerer = "llm"
        if answer_text is None:
            answer_text = self.texts.no_answer if best is None else best.passage.chat_text()
        # A whole answer parks nothing, and still replaces what an earlier answer parked.
        first, rest = (self._whole(answer_text), []) if whole else self._split(answer_text)
        await self._store_by_deadline(
            self._store_answer(openid, question, answer_text, rest), deadline_at
        )
        outcome = "no_answer" if answerer == "kb" and best is None else "answered"
        return Answer(TextReply(content=first), answerer, outcome)

    async def _store_answer(
        self, openid: str, question: str, answer_text: str, rest: list[str]
    ) -> None:
        """Remember the exchange (with an LLM) and park the parts after the first."""
        if self.llm is not None:
            await self.memory.remember(openid, question, answer_text)
        await self.parked.park(openid, rest)

    async def _store_by_deadline(
        self, write: Coroutine[Any, Any, None], deadline_at: float
    ) -> None:
        """Run `write`, waiting for it only until the reply is due.

        A hanging Redis costs up to its socket timeout per call, more than the margin kept
        to send the reply. A write still running then finishes after the reply (in Redis,
        or in the in-process store once Redis is declared down): the answer is not late,
        and only a message racing that write may miss it.
        """
        task = asyncio.ensure_future(write)
        self._late_writes.add(task)  # holds a reference until the task is done
        task.add_done_callback(self._late_writes.discard)
        await asyncio.wait({task}, timeout=max(self._budget_s(deadline_at), MIN_STORE_WAIT_S))
        if task.done():
            task.result()  # a failure surfaces as it did when the write was awaited
            return
        log.warning("storing the answer outlasts the reply deadline; finishing it after the reply")
        task.add_done_callback(_log_late_failure)

    async def finish_writes(self) -> None:
        """Wait for writes still running after their reply went out (before shutdown)."""
        if self._late_writes:
            await asyncio.wait(set(self._late_writes))

    async def _ask_llm(
        self, openid: str, question: str, hits: list[Hit], deadline_at: float
    ) -> str | None:
        assert self.llm is not None
        if self._budget_s(deadline_at) < MIN_LLM_BUDGET_S:
            metrics.LLM_FALLBACKS.labels("deadline").inc()
            return None
        # Passages well below the threshold are noise to the LLM as much as to the user.
        context = [h for h in hits if h.confidence >= self.settings.kb_min_score / 2]
        history = await self.memory.history(openid)
        messages = build_messages(self.settings.llm_system_prompt, context, history, question)
        timeout_s = min(self.settings.llm_timeout_s, self._budget_s(deadline_at))
        if timeout_s < MIN_LLM_BUDGET_S:  # the memory lookup took what was left
            metrics.LLM_FALLBACKS.labels("deadline").inc()
            return None
        try:
            return await _plain_answer(self.llm, messages, timeout_s)
        except LLMError as exc:
            log.warning("LLM failed (%s), answering from the knowledge base", exc)
            metrics.LLM_ERRORS.labels(exc.reason).inc()
            metrics.LLM_FALLBACKS.labels(exc.reason).inc()
            return None

    def _budget_s(self, deadline_at: float) -> float:
        """Seconds left for the LLM: to the deadline, less the margin to send the reply."""
        return deadline_at - self.clock() - self.settings.deadline_margin_ms / 1000

    def _split(self, text: str) -> tuple[str, list[str]]:
        """The first part of `text` with the `继续` hint, and the parts to park after it."""
        parts = self._parts(text)[0] or [self.texts.no_answer]
        return self._with_hint(parts[0], len(parts) - 1), parts[1:]

    def _whole(self, text: str) -> str:
        """`text` for X-Reply-Parts: all, within the same MAX_ANSWER_PARTS: the gateway sends
        it as customer-service messages, and a huge passage would be a hundred of them."""
        parts, cut = self._parts(text)
        return "\n".join(parts) if cut else text.strip()

    def _parts(self, text: str) -> tuple[list[str], bool]:
        """`text` in parts of at most part_bytes, no more than MAX_ANSWER_PARTS of them, and
        whether that cut some of it."""
        # A character is at least one byte: this many characters fill every allowed part.
        bounded = text[: MAX_ANSWER_PARTS * self.part_bytes]
        parts = [p for p in (s.strip() for s in split_text(bounded, self.part_bytes)) if p]
        cut = len(parts) > MAX_ANSWER_PARTS or len(bounded) < len(text)
        if cut:
            log.warning(
                "an answer of %d characters was cut to its first %d parts; shorten the "
                "knowledge-base passage (or LLM_MAX_TOKENS)",
                len(text),
                MAX_ANSWER_PARTS,
            )
            parts = parts[:MAX_ANSWER_PARTS]
        return parts, cut

    def _with_hint(self, part: str, remaining: int) -> str:
        if remaining <= 0:
            return part.strip()
        return f"{part.strip()}\n\n{self.texts.continue_hint.format(remaining=remaining)}"


async def _plain_answer(llm: LLMClient, messages: list[dict[str, str]], timeout_s: float) -> str:
    """The LLM's answer as chat text. An answer that is only Markdown marks ('---', an empty
    code block, '<br>') leaves nothing to send: it is malformed, like an empty one."""
    plain = markdown_to_plain(await llm.complete(messages, timeout_s))
    if not plain:
        raise LLMError("malformed", "nothing left as plain text")
    return plain


def _log_late_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("storing an answer after its reply failed", exc_info=task.exception())
