"""The served rerank pipeline (pair tokenizer -> classifier -> score step) run in-process with ONNX Runtime.

The export's verifier and the benchmark's in-process baseline use it; Triton runs the same three steps.
"""

from __future__ import annotations

import numpy as np

from triton_embeddings import contract as c
from triton_embeddings.export.pipeline import encoder_feed
from triton_embeddings.triton_models.onnx_session import make_session
from triton_embeddings.triton_models.pair_tokenize import PairTokenizer


class RerankPipeline:
    def __init__(self, tokenizer: PairTokenizer, classifier: str, score: str, threads: int = 0,
                 providers: list[str] | None = None):
        self.tokenizer = tokenizer
        self.classifier = make_session(classifier, threads, providers)
        self.score_step = make_session(score, threads, providers)
        self.inputs = [i.name for i in self.classifier.get_inputs()]

    def score_batch(self, query: list[str], documents: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(scores, logits), each float32 [n], for pairs padded together."""
        feed = encoder_feed(self.tokenizer.pairs(query, documents))
        (logits,) = self.classifier.run(None, {k: feed[k] for k in self.inputs})
        score, logit = self.score_step.run([c.SCORE, c.LOGIT], {c.SCORE_STEP_INPUT: logits.astype(np.float32)})
        return score.reshape(-1), logit.reshape(-1)

    def predict(self, pairs: list[tuple[str, str]], batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """Score pairs in batches sorted by length (as CrossEncoder.predict does); returns (scores, logits)."""
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
        scores = np.zeros(len(pairs), dtype=np.float32)
        logits = np.zeros(len(pairs), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            scores[idx], logits[idx] = self.score_batch([pairs[i][0] for i in idx], [pairs[i][1] for i in idx])
        return scores, logits


def calibration_pair_feeds(tokenizer: PairTokenizer, texts: list[str], batch_size: int = 16) -> list[dict]:
    """Classifier inputs for pairs of neighbouring calibration texts (query, document), in batches."""
    pairs = sorted(zip(texts, texts[1:] + texts[:1]), key=lambda p: len(p[0]) + len(p[1]))
    return [encoder_feed(tokenizer.pairs([q for q, _ in chunk], [d for _, d in chunk]))
            for chunk in (pairs[i : i + batch_size] for i in range(0, len(pairs), batch_size))]
