"""Tokens before the model has counted them. The gateway learns a request's tokens from the model's answer
(usage), but a quota must decide before; so each request gets two numbers from its text alone:

- `lower`: a bound the real count never falls below: each whitespace-separated word is at least one token for
  the word-piece and BPE tokenizers served here, and truncation cuts an input at the model's max length. Only
  a request whose `lower` exceeds a token quota is refused as one that could never fit (400).
- `estimate`: what is reserved against the quota before the request runs: a token per 4 characters (OpenAI's
  rule of thumb for English), never below `lower`, never above the max length. After the answer the
  reservation is settled with the real count: the difference is refunded, or charged as a debt the key pays
  back before its next request is admitted.
"""

from __future__ import annotations

from dataclasses import dataclass

CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class Estimate:
    lower: int
    estimate: int


def _one(chars: int, words: int, cap: int) -> tuple[int, int]:
    lower = words if cap <= 0 else min(words, cap)
    guess = max(1, lower, -(-chars // CHARS_PER_TOKEN))
    return lower, guess if cap <= 0 else min(guess, cap)


def of_texts(texts: list[str], max_length: int) -> Estimate:
    """Texts embedded one by one; `max_length` 0: not truncated (windows, or an upstream's own limit)."""
    pairs = [_one(len(t), len(t.split()), max_length) for t in texts]
    return Estimate(sum(p[0] for p in pairs), sum(p[1] for p in pairs))


def of_pairs(query: str, documents: list[str], max_length: int) -> Estimate:
    """(query, document) pairs: each pair holds the query's tokens and the document's."""
    q_chars, q_words = len(query), len(query.split())
    pairs = [_one(q_chars + len(d), q_words + len(d.split()), max_length) for d in documents]
    return Estimate(sum(p[0] for p in pairs), sum(p[1] for p in pairs))
