"""Tiny sentence-transformers models built here (random weights), for paths the seed's models lack.

`build_tiny_e5(folder)`: a 2-layer BERT with CLS pooling, normalization, e5-style prompts
(`query: ` / `passage: `, default `passage`) and a 32-token max length, saved in the library's own format.
"""

from __future__ import annotations

from pathlib import Path

TINY_PROMPTS = {"query": "query: ", "passage": "passage: "}
TINY_MAX_LENGTH = 32


def build_tiny_e5(folder: Path, tokenizer_source: str, seed: int = 0) -> Path:
    """Save the tiny model into `folder` (reusing the tokenizer of `tokenizer_source`) and return it."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(seed)
    hf = Path(folder) / "hf"
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, initializer_range=0.5,
    )
    BertModel(config).save_pretrained(hf)
    AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(hf)
    transformer = models.Transformer(str(hf), max_seq_length=TINY_MAX_LENGTH)
    pooling = models.Pooling(transformer.get_embedding_dimension(), pooling_mode="cls")
    model = SentenceTransformer(
        modules=[transformer, pooling, models.Normalize()], prompts=dict(TINY_PROMPTS),
        default_prompt_name="passage", device="cpu",
    )
    out = Path(folder) / "tiny-e5"
    model.save(str(out))
    return out
