"""The knowledge base: Markdown/text files split into passages by heading, ranked with BM25.

Chinese is segmented with jieba (search mode, which also emits the shorter words inside
long ones); Latin words and numbers are lower-cased tokens of their own, so mixed questions
such as "token验证失败" or "80端口" match both halves. A hit's confidence is the share of
the question's IDF weight that the passage contains: unrelated questions share only common
words with any passage and stay below KB_MIN_SCORE, so the bot says it does not know
instead of answering with an unrelated passage.
"""

from __future__ import annotations

import heapq
import logging
import math
import os
import re
import threading
import time
import unicodedata
import warnings
from array import array
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

with warnings.catch_warnings():
    # jieba 0.42 imports pkg_resources, which newer setuptools flags as deprecated.
    warnings.simplefilter("ignore")
    import jieba

from .chat_text import markdown_to_plain

log = logging.getLogger(__name__)
jieba.setLogLevel(logging.WARNING)

KB_SUFFIXES = {".md", ".markdown", ".txt"}
SYNONYMS_FILE = "_synonyms.txt"  # in KB_DIR; the leading _ keeps it out of the passages
TITLE_WEIGHT = 2  # a title's words count this many times in the passage
WORD_SHARE = 0.9  # confidence = this share of word coverage + the rest of character coverage
RERANK_DEPTH = 10  # BM25 candidates re-ranked by confidence
COMMON_SHARE = 0.05  # a term in more than this share of the passages is "common" ...
COMMON_MIN_DF = 500  # ... and in more than this many (small knowledge bases: exact scoring)
COMMON_CANDIDATES = 200  # the candidates that common terms still score
K1 = 1.2
B = 0.75

# Words that carry no topic: question words, particles, pronouns, filler verbs.
_STOPWORD_TEXT = """
    的 了 吗 呢 吧 啊 呀 哦 嗯 么 嘛 是 不 没 有 没有 在 和 与 及 或 或者 就 都 也 还 又 再 很 太
    我 你 您 他 她 它 我们 你们 他们 咱们 自己 这 那 这个 那个 这些 那些 这里 那里 这样 那样
    一个 一下 一些 一点 请问 请 麻烦 帮 帮忙 我想 想 想要 知道 问 问下 问一下 该 应该 能 能不能 可以
    可不可以 可能 会 要 需要 得 地 着 过 把 被 给 让 对 从 到 用 做 弄 搞 怎么 怎么办 怎样 怎么样
    如何 什么 啥 为什么 为啥 哪 哪里 哪儿 哪个 哪些 多少 几 吗 么 呢 时候 的话 然后 还是 但是 如果
    一直 总是 老是 现在 已经 是不是 有没有 咋 咋办 咋样 里 上 下 中 后 前 东西 干嘛 干什么
    the a an is are was were be been to of in on at for by with how what why when where which who
    do does did i my me we our you your it its this that these those can could should would will
    and or not no yes if then than there here from as about into get got have has had any some
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_SKIP = re.compile(r"^[\W_]+$")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.+?)\s*#*\s*$")
# YAML front matter: a first line of ---, then lines up to the next --- (or ...).
_FRONT_MATTER = re.compile(r"\A\ufeff?---[ \t]*\n.*?\n(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.S)


_CJK_RUN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+")
_LIST_NUMBER = re.compile(r"(?m)^\s*\d+[.)、]\s")
CHAR_PREFIX = "¹"  # marks single-character features apart from words


def _analyze(
    text: str, synonyms: dict[str, str] | None, with_chars: bool
) -> tuple[list[str], list[str]]:
    """(words, characters) of `text`, stopwords dropped.

    Words are jieba's precise segmentation plus the dictionary words inside long words
    (jieba's search mode), Latin words and numbers lower-cased. Characters are the Chinese
    characters of the kept words, marked with CHAR_PREFIX.
    """
    words: list[str] = []
    chars: list[str] = []
    freq = jieba.dt.FREQ
    # NFKC: full-width Latin and digits (ＴＯＫＥＮ, ８０８０, typed in a Chinese IME's
    # full-width mode) are the same words as their ASCII forms, in questions and passages.
    for raw in jieba.cut(_LIST_NUMBER.sub(" ", unicodedata.normalize("NFKC", text)).lower()):
        word = raw.strip()
        if not word or word in STOPWORDS or _SKIP.match(word):
            continue
        if len(word) == 1 and word.isdigit():
            continue  # list numbers, IP addresses, versions: no topic in a lone digit
        cjk = _CJK_RUN.fullmatch(word) is not None
        if with_chars and cjk:
            chars.extend(CHAR_PREFIX + char for char in word)
            if len(word) == 1:
                continue  # a one-character word is counted once, as a character
        if cjk and len(word) > 2:
            for size in (2, 3):
                for i in range(len(word) - size + 1):
                    sub = word[i : i + size]
                    if size < len(word) and freq.get(sub) and sub not in STOPWORDS:
                        words.append(sub)
        words.append(word)
    if synonyms:
        words = [synonyms.get(word, word) for word in words]
    return words, chars


def tokenize(text: str, synonyms: dict[str, str] | None = None) -> list[str]:
    """Search words of `text`: jieba words (Chinese), lower-cased Latin words and numbers.

    With `synonyms`, each word is replaced by its group's canonical word.
    """
    return _analyze(text, synonyms, with_chars=False)[0]


def features(text: str, synonyms: dict[str, str] | None = None) -> list[str]:
    """Words plus single Chinese characters: characters catch paraphrases that share no
    word with the passage (泄漏/泄露, 校验/验证) at a low IDF weight of their own."""
    words, chars = _analyze(text, synonyms, with_chars=True)
    return words + chars


def load_synonyms(path: Path) -> dict[str, str]:
    """Read a synonyms file: one group a line, words separated by spaces or commas, `#` comments.

    Every word of a group maps to the group's first word. Words are lower-cased and should
    be single search words: jieba adds them to its dictionary so they are kept whole, and a
    line of one word only does that (product names such as 小程序).
    """
    mapping: dict[str, str] = {}
    if not path.is_file():
        return mapping
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        words = [w.strip().lower() for w in re.split(r"[\s,，、]+", line.split("#", 1)[0])]
        words = [w for w in words if w]
        for word in words:
            if _CJK_RUN.fullmatch(word):
                jieba.add_word(word)
            if len(words) > 1:
                mapping.setdefault(word, words[0])
    return mapping


@dataclass(frozen=True)
class Passage:
    title: str
    body: str  # Markdown as written
    source: str  # file path relative to the knowledge-base folder
    section: str = ""  # the enclosing heading, for context

    def chat_text(self) -> str:
        """The passage as a chat answer: its title, then the body as plain text."""
        return f"【{self.title}】\n{markdown_to_plain(self.body)}"


@dataclass(frozen=True)
class Hit:
    passage: Passage
    score: float  # BM25
    confidence: float  # 0..1, share of the question's weight found in the passage


def split_markdown(text: str, source: str) -> list[Passage]:
    """One passage per heading; text before the first heading is titled by the file name.

    A leading front-matter block (--- ... ---, as static-site tools write) is metadata, not
    an answer: an author's e-mail must not reach users. Headings lose their Markdown marks,
    since the title is shown as 【title】.
    """
    text = _FRONT_MATTER.sub("", text, count=1)
    passages: list[Passage] = []
    title = Path(source).stem
    section = ""
    parents: dict[int, str] = {}
    lines: list[str] = []
    in_fence = False

    def flush() -> None:
        body = "\n".join(lines).strip()
        if body:
            passages.append(Passage(title=title, body=body, source=source, section=section))
        lines.clear()

    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
        match = None if in_fence else _HEADING.match(line)
        if match is None:
            lines.append(line)
            continue
        flush()
        level = len(match.group(1))
        parents = {lvl: name for lvl, name in parents.items() if lvl < level}
        section = parents[max(parents)] if parents else ""
        title = markdown_to_plain(match.group(2).strip()) or match.group(2).strip()
        parents[level] = title
    flush()
    return passages


def split_text_file(text: str, source: str) -> list[Passage]:
    """A plain-text file is one passage titled by its first line (or its file name)."""
    text = text.strip()
    if not text:
        return []
    first, _, rest = text.partition("\n")
    if rest.strip() and len(first) <= 60:
        return [Passage(title=first.strip(), body=rest.strip(), source=source)]
    return [Passage(title=Path(source).stem, body=text, source=source)]


def kb_files(kb_dir: Path) -> list[Path]:
    """Knowledge-base files under kb_dir, hidden files and folders skipped, in a stable order.

    A missing or unreadable kb_dir raises OSError: rglob would find nothing in it, and an
    empty index must not replace the real one while a folder is renamed or unmounted.
    """
    with os.scandir(kb_dir):
        pass
    found = []
    for path in kb_dir.rglob("*"):
        rel = path.relative_to(kb_dir)
        if any(part.startswith((".", "_")) for part in rel.parts):
            continue
        if path.suffix.lower() in KB_SUFFIXES and path.is_file():
            found.append(path)
    return sorted(found)


class KnowledgeFileError(ValueError):
    """A knowledge-base file that cannot be read as text; names the file for the operator."""


def load_passages(kb_dir: Path) -> list[Passage]:
    passages: list[Passage] = []
    for path in kb_files(kb_dir):
        source = path.relative_to(kb_dir).as_posix()
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            raise KnowledgeFileError(
                f"knowledge-base file {source} is not UTF-8 (byte {exc.start}): "
                "save it as UTF-8 (GBK and UTF-16 are not read)"
            ) from None
        if path.suffix.lower() == ".txt":
            passages.extend(split_text_file(text, source))
        else:
            passages.extend(split_markdown(text, source))
    return passages


class KnowledgeBase:
    """An immutable BM25 index over passages; build a new one to change it."""

    def __init__(self, passages: Sequence[Passage], synonyms: dict[str, str] | None = None) -> None:
        self.passages = list(passages)
        self.synonyms = dict(synonyms or {})
        n = len(self.passages)
        doc_tokens = [self._passage_tokens(p) for p in self.passages]
        lengths = [len(tokens) for tokens in doc_tokens]
        avg_len = (sum(lengths) / n) if n else 1.0
        tf_by_term: dict[str, list[tuple[int, int]]] = {}
        for doc_id, tokens in enumerate(doc_tokens):
            counts: dict[str, int] = {}
            for token in tokens:
                counts[token] = counts.get(token, 0) + 1
            for term, tf in counts.items():
                tf_by_term.setdefault(term, []).append((doc_id, tf))
        self._idf_missing = self._idf_of(n, 0)
        self._idf: dict[str, float] = {}
        # term -> (sorted doc ids, precomputed BM25 weights): a query only adds numbers.
        self._postings: dict[str, tuple[array, array]] = {}
        for term, entries in tf_by_term.items():
            idf = self._idf_of(n, len(entries))
            self._idf[term] = idf
            ids = array("i")
            weights = array("d")
            for doc_id, tf in entries:
                norm = K1 * (1 - B + B * lengths[doc_id] / avg_len)
                ids.append(doc_id)
                weights.append(idf * tf * (K1 + 1) / (tf + norm))
            self._postings[term] = (ids, weights)

    @staticmethod
    def _idf_of(n: int, df: int) -> float:
        return math.log(1 + (n - df + 0.5) / (df + 0.5))

    def _passage_tokens(self, passage: Passage) -> list[str]:
        title = features(f"{passage.section} {passage.title}", self.synonyms)
        return title * TITLE_WEIGHT + features(passage.body, self.synonyms)

    @classmethod
    def from_dir(cls, kb_dir: Path) -> KnowledgeBase:
        synonyms = load_synonyms(kb_dir / SYNONYMS_FILE)
        return cls(load_passages(kb_dir), synonyms)

    def __len__(self) -> int:
        return len(self.passages)

    def search(self, query: str, k: int = 3) -> list[Hit]:
        """The k best passages for `query`, best first (possibly fewer, possibly none)."""
        terms = list(dict.fromkeys(features(query, self.synonyms)))
        if not terms or not self.passages:
            return []
        scores = self._accumulate(terms)
        if not scores:
            return []
        candidates = heapq.nlargest(max(k, RERANK_DEPTH), scores.items(), key=lambda i: i[1])
        words = [t for t in terms if not t.startswith(CHAR_PREFIX)]
        chars = [t for t in terms if t.startswith(CHAR_PREFIX)]
        hits = []
        for doc_id, score in candidates:
            confidence = (
                WORD_SHARE * self._coverage(words, doc_id)
                + (1 - WORD_SHARE) * self._coverage(chars, doc_id)
                if words and chars
                else self._coverage(words or chars, doc_id)
            )
            hits.append(Hit(self.passages[doc_id], score, confidence))
        # BM25 favours a passage that repeats one query word; weighing by confidence favours
        # the one that covers the whole question.
        hits.sort(key=lambda h: h.score * h.confidence, reverse=True)
        return hits[:k]

    def _accumulate(self, terms: list[str]) -> dict[int, float]:
        """BM25 scores of the passages that contain any of `terms`.

        Long postings (terms in more than COMMON_SHARE of a large knowledge base, such as
        frequent characters) cost the most and discriminate the least: they only add to the
        best candidates found by the rarer terms, looked up by bisection. Small knowledge
        bases are scored exactly.
        """
        common_df = max(COMMON_MIN_DF, int(COMMON_SHARE * len(self.passages)))
        postings = [self._postings[t] for t in terms if t in self._postings]
        rare = [p for p in postings if len(p[0]) <= common_df]
        common = [p for p in postings if len(p[0]) > common_df]
        if not rare and common:
            # Only common terms: candidates come from the rarest one.
            common.sort(key=lambda p: len(p[0]))
            rare, common = common[:1], common[1:]
        scores: dict[int, float] = {}
        get = scores.get
        for ids, weights in rare:
            for doc_id, weight in zip(ids, weights, strict=True):
                scores[doc_id] = get(doc_id, 0.0) + weight
        if common:
            best = heapq.nlargest(COMMON_CANDIDATES, scores.items(), key=lambda i: i[1])
            scores = dict(best)
            for ids, weights in common:
                for doc_id in scores:
                    i = bisect_left(ids, doc_id)
                    if i < len(ids) and ids[i] == doc_id:
                        scores[doc_id] += weights[i]
        return scores

    def _coverage(self, terms: list[str], doc_id: int) -> float:
        """The share of the terms' IDF weight found in the passage; unknown terms weigh most."""
        total = sum(self._idf.get(term, self._idf_missing) for term in terms)
        if not total:
            return 0.0
        return sum(self._idf[t] for t in terms if self._contains(t, doc_id)) / total

    def _contains(self, term: str, doc_id: int) -> bool:
        posting = self._postings.get(term)
        if posting is None:
            return False
        ids = posting[0]
        i = bisect_left(ids, doc_id)
        return i < len(ids) and ids[i] == doc_id


def _signature(kb_dir: Path) -> tuple[tuple[str, int, int], ...]:
    """What changes when a knowledge-base file is added, removed or edited."""
    sig = []
    files = kb_files(kb_dir)
    if (kb_dir / SYNONYMS_FILE).is_file():
        files.append(kb_dir / SYNONYMS_FILE)
    for path in files:
        stat = path.stat()
        sig.append((path.relative_to(kb_dir).as_posix(), stat.st_mtime_ns, stat.st_size))
    return tuple(sig)


class LiveKnowledgeBase:
    """The knowledge base of a folder, rebuilt when its files change (no restart needed).

    A failed reload (unreadable file, bad encoding) keeps the previous index and is counted.
    """

    def __init__(
        self,
        kb_dir: Path,
        *,
        on_reload: Callable[[str, int], None] | None = None,
    ) -> None:
        self.kb_dir = kb_dir
        self._on_reload = on_reload or (lambda result, passages: None)
        self._lock = threading.Lock()
        self._signature = _signature(kb_dir)
        self._failed: object = None
        self.current = KnowledgeBase.from_dir(kb_dir)
        self.loaded_at = time.time()
        self._on_reload("ok", len(self.current))

    def reload_if_changed(self) -> bool:
        """Rebuild the index if a file changed since the last load; True when it did."""
        with self._lock:
            try:
                signature = _signature(self.kb_dir)
            except OSError as exc:  # the folder itself is gone or unreadable
                return self._reload_failed(exc, str(exc))
            if signature in (self._signature, self._failed):
                return False
            try:
                kb = KnowledgeBase.from_dir(self.kb_dir)
            except (OSError, KnowledgeFileError) as exc:
                return self._reload_failed(exc, signature)
            self._signature = signature
            self.current = kb
            self.loaded_at = time.time()
            log.info("knowledge base reloaded: %d passages from %s", len(kb), self.kb_dir)
            self._on_reload("ok", len(kb))
            return True

    def _reload_failed(self, exc: Exception, failure: object) -> bool:
        """Log and count a failed reload once per distinct failure, not once per check."""
        if failure != self._failed:
            self._failed = failure
            log.warning("knowledge base reload failed, keeping the previous one: %s", exc)
            self._on_reload("error", len(self.current))
        return False
