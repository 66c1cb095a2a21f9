"""Knowledge-base benchmark: load time and answer latency (p50/p99) at 1,000, 10,000 and
100,000 generated passages.

Target: p50 under 5 ms at 10,000 passages, growing no worse than linearly with size. The
baseline, measured in the same run, is a linear scan that scores every passage (what the
inverted index saves). Passages are made of real Chinese words (jieba's dictionary, drawn
with a Zipf-like skew) plus English words and numbers; questions paraphrase a random
passage: a few of its words, one foreign word and question filler.

Run: .venv/bin/python -m bench.kb_latency   (stops by itself in a few minutes)
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "services" / "ai-api"))

from celestial_nexus.kb import STOPWORDS, KnowledgeBase, jieba, tokenize  # noqa: E402

SIZES = (1_000, 10_000, 100_000)
QUERIES = {1_000: 1000, 10_000: 1000, 100_000: 300}
BASELINE_QUERIES = 50
PASSAGES_PER_FILE = 200
P50_TARGET_MS = 5.0
SEED = 20261129
ENGLISH = (
    "token",
    "docker",
    "redis",
    "nginx",
    "https",
    "llm",
    "api",
    "key",
    "url",
    "port",
    "timeout",
    "log",
    "metrics",
    "health",
    "compose",
    "make",
    "run",
    "ssl",
    "json",
)


def vocabulary(rng: random.Random, size: int = 20_000) -> list[str]:
    """Frequent Chinese words from jieba's dictionary, most frequent first."""
    jieba.initialize()
    words = [
        w
        for w, f in sorted(jieba.dt.FREQ.items(), key=lambda i: -i[1])
        if f and 2 <= len(w) <= 4 and w not in STOPWORDS and "\u4e00" <= w[0] <= "\u9fff"
    ]
    return words[:size]


def draw(rng: random.Random, vocab: list[str], n: int) -> list[str]:
    # Zipf-like: index ~ size ** U, so a few words are common and most are rare.
    return [vocab[int(len(vocab) ** rng.random()) - 1] for _ in range(n)]


def make_passage(rng: random.Random, vocab: list[str]) -> tuple[str, str]:
    title = "".join(draw(rng, vocab, rng.randint(2, 4)))
    sentences = []
    for _ in range(rng.randint(3, 6)):
        words = draw(rng, vocab, rng.randint(5, 10))
        if rng.random() < 0.4:
            words.insert(rng.randrange(len(words)), rng.choice(ENGLISH))
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words)), str(rng.randint(1, 65535)))
        sentences.append("".join(words) + "。")
    return title, "".join(sentences)


def write_kb(folder: Path, passages: list[tuple[str, str]]) -> None:
    for start in range(0, len(passages), PASSAGES_PER_FILE):
        chunk = passages[start : start + PASSAGES_PER_FILE]
        text = "\n\n".join(f"## {title}\n\n{body}" for title, body in chunk)
        (folder / f"part-{start // PASSAGES_PER_FILE:05d}.md").write_text(text, "utf-8")


def make_question(rng: random.Random, vocab: list[str], passage: tuple[str, str]) -> str:
    words = tokenize(passage[1])
    picked = rng.sample(words, min(len(words), rng.randint(2, 4)))
    return "请问" + "".join(picked) + draw(rng, vocab, 1)[0] + "怎么办？"


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def linear_scan(kb: KnowledgeBase, doc_terms: list[set[str]], question: str) -> int:
    """Baseline: score every passage by the IDF of the question words it contains."""
    terms = set(tokenize(question))
    best, best_score = -1, 0.0
    for doc_id, words in enumerate(doc_terms):
        score = sum(kb._idf.get(t, 0.0) for t in terms & words)
        if score > best_score:
            best, best_score = doc_id, score
    return best


def passage_terms(kb: KnowledgeBase) -> list[set[str]]:
    """Each passage's words, from the index (the baseline gets them for free)."""
    doc_terms: list[set[str]] = [set() for _ in kb.passages]
    for term, (ids, _weights) in kb._postings.items():
        for doc_id in ids:
            doc_terms[doc_id].add(term)
    return doc_terms


def run_size(size: int, rng: random.Random, vocab: list[str]) -> dict:
    passages = [make_passage(rng, vocab) for _ in range(size)]
    with tempfile.TemporaryDirectory(prefix=f"kb-bench-{size}-") as tmp:
        folder = Path(tmp)
        write_kb(folder, passages)
        started = time.perf_counter()
        kb = KnowledgeBase.from_dir(folder)
        load_s = time.perf_counter() - started
    assert len(kb) == size, (len(kb), size)
    sources = [rng.choice(passages) for _ in range(QUERIES[size])]
    questions = [make_question(rng, vocab, source) for source in sources]
    for question in questions[:20]:  # warm-up
        kb.search(question, k=3)
    latencies_ms = []
    found = 0
    for question, source in zip(questions, sources, strict=True):
        started = time.perf_counter()
        hits = kb.search(question, k=3)
        latencies_ms.append((time.perf_counter() - started) * 1000)
        found += bool(hits) and hits[0].passage.body == source[1]
    result = {
        "passages": size,
        "load_s": round(load_s, 2),
        "p50_ms": round(statistics.median(latencies_ms), 3),
        "p99_ms": round(percentile(latencies_ms, 99), 3),
        "queries": len(questions),
        "top1": round(found / len(questions), 3),
    }
    if size <= 10_000:
        doc_terms = passage_terms(kb)
        started = time.perf_counter()
        for question in questions[:BASELINE_QUERIES]:
            linear_scan(kb, doc_terms, question)
        result["baseline_scan_ms"] = round(
            (time.perf_counter() - started) * 1000 / BASELINE_QUERIES, 2
        )
    return result


def main() -> None:
    rng = random.Random(SEED)
    vocab = vocabulary(rng)
    results = []
    print("knowledge base latency (search for the top 3 passages)")
    print(
        f"{'passages':>9} {'load s':>8} {'p50 ms':>8} {'p99 ms':>8} {'top-1':>6}"
        f" {'scan baseline ms':>17}"
    )
    for size in SIZES:
        result = run_size(size, rng, vocab)
        results.append(result)
        baseline = result.get("baseline_scan_ms", "-")
        print(
            f"{size:>9,} {result['load_s']:>8} {result['p50_ms']:>8} {result['p99_ms']:>8}"
            f" {result['top1']:>6} {baseline:>17}",
            flush=True,
        )
    by_size = {r["passages"]: r for r in results}
    p50_ok = by_size[10_000]["p50_ms"] < P50_TARGET_MS
    growth = by_size[100_000]["p50_ms"] / max(by_size[10_000]["p50_ms"], 1e-6)
    linear_ok = growth <= 10 * 1.2  # 10x the passages, at most ~10x the time (20% noise)
    print(
        f"p50 at 10,000 passages: {by_size[10_000]['p50_ms']} ms "
        f"(target < {P50_TARGET_MS} ms): {'PASS' if p50_ok else 'FAIL'}"
    )
    print(
        f"p50 growth 10,000 -> 100,000: x{growth:.1f} (linear = x10): "
        f"{'PASS' if linear_ok else 'FAIL'}"
    )
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "kb_latency.json").write_text(
        json.dumps(
            {
                "results": results,
                "p50_target_ok": p50_ok,
                "growth_10k_100k": round(growth, 2),
                "linear_ok": linear_ok,
            },
            indent=2,
        ),
        "utf-8",
    )


if __name__ == "__main__":
    main()
