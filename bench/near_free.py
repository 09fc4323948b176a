"""The near-free model: 1 layer, hidden 32, all-MiniLM-L6-v2's tokenizer and max length (256), mean pooling and
normalization, random weights. Its encoder costs almost nothing, so a benchmark on it measures the serving path
alone (tokenizing, batching, the hops, serialization). `bench/bench.py --model near-free` builds and serves it."""

from __future__ import annotations

import sys
from pathlib import Path

NAME = "near-free"
MAX_LENGTH = 256


def build_near_free(folder: Path, tokenizer_source: str, seed: int = 0) -> Path:
    """Save the model under `folder` (tokenizer from `tokenizer_source`) and return its folder."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = Path(folder) / NAME
    if (out / "modules.json").exists():
        return out
    torch.manual_seed(seed)
    hf = Path(folder) / f"{NAME}-hf"
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    BertModel(config).save_pretrained(hf)
    tokenizer.save_pretrained(hf)
    transformer = models.Transformer(str(hf), max_seq_length=MAX_LENGTH)
    pooling = models.Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device="cpu").save(str(out))
    return out


def near_free_folder() -> Path:
    """The model's folder in the model cache (built on first use), shared by the bench and a peer's recipe."""
    from triton_embeddings.local.models import cache_dir, model_source

    return build_near_free(cache_dir() / "bench", model_source("all-MiniLM-L6-v2"))


if __name__ == "__main__":  # prints the folder, e.g. for `bench/peer_infinity.sh "$(python bench/near_free.py)" ...`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    print(near_free_folder())
