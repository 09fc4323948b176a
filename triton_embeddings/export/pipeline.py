"""The served pipeline (tokenizer -> encoder -> pooler) run in-process with ONNX Runtime.

The export's verifier and the benchmark's raw baseline use it; Triton runs the same three steps.
"""

from __future__ import annotations

import numpy as np

from triton_embeddings import contract as c
from triton_embeddings.triton_models.onnx_session import make_session
from triton_embeddings.triton_models.tokenize import TextTokenizer


class OnnxPipeline:
    def __init__(self, tokenizer: TextTokenizer, encoder: str, pooler: str, threads: int = 0,
                 providers: list[str] | None = None):
        self.tokenizer = tokenizer
        self.encoder = make_session(encoder, threads, providers)
        self.pooler = make_session(pooler, threads, providers)
        self.encoder_inputs = [i.name for i in self.encoder.get_inputs()]

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer(texts)
        feed = encoder_feed(enc)
        (hidden,) = self.encoder.run(None, {k: feed[k] for k in self.encoder_inputs})
        (pooled,) = self.pooler.run(None, {c.TOKEN_EMBEDDINGS: hidden, c.ATTENTION_MASK: enc.attention_mask})
        return pooled

    def embed(self, texts: list[str], batch_size: int = 32, sort_by_length: bool = True) -> np.ndarray:
        """Embed in batches; sorting by length first keeps padding small (sentence-transformers does too)."""
        order = list(range(len(texts)))
        if sort_by_length:
            order.sort(key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self.pooler.get_outputs()[0].shape[-1]), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = self.embed_batch([texts[i] for i in idx])
        return out


def encoder_feed(enc) -> dict[str, np.ndarray]:
    """The encoder's ONNX inputs for a tokenized batch (`token_type_ids` too: drop it if the model lacks it)."""
    return {c.ONNX_INPUT_IDS: enc.input_ids, c.ONNX_ATTENTION_MASK: enc.attention_mask,
            c.ONNX_TOKEN_TYPE_IDS: enc.token_type_ids}


def calibration_feeds(tokenizer: TextTokenizer, texts: list[str], batch_size: int = 16):
    """Encoder inputs for `texts`, sorted by length, in batches."""
    texts = sorted(texts, key=len)
    return [encoder_feed(tokenizer(texts[i : i + batch_size])) for i in range(0, len(texts), batch_size)]
