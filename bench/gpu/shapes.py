"""Random-weight sentence-transformers models of the measured shapes, built from configs (no weights, no hub).

Throughput does not depend on the weight values, so a model built from all-MiniLM-L6-v2's, all-mpnet-base-v2's
or bge-large-en-v1.5's config costs what the trained one does (`tiny` and `tiny-mpnet` are the CPU's). Their
tokenizer is a WordPiece one over a made-up vocabulary `w0 w1 ...`: a text of n such words is exactly n + 2
tokens, so the lengths measured are the lengths asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@dataclass(frozen=True)
class Shape:
    name: str
    config: str  # the transformers config class
    dims: dict = field(default_factory=dict)
    pooling: str = "mean"
    normalize: bool = True


SHAPES = {s.name: s for s in (
    Shape("minilm-l6", "BertConfig", dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6,
                                          num_attention_heads=12, intermediate_size=1536)),
    Shape("mpnet-base", "MPNetConfig", dict(vocab_size=30527, hidden_size=768, num_hidden_layers=12,
                                            num_attention_heads=12, intermediate_size=3072,
                                            max_position_embeddings=514)),
    Shape("bge-large", "BertConfig", dict(vocab_size=30522, hidden_size=1024, num_hidden_layers=24,
                                          num_attention_heads=16, intermediate_size=4096), pooling="cls"),
    Shape("tiny", "BertConfig", dict(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64)),
    Shape("tiny-mpnet", "MPNetConfig", dict(vocab_size=1000, hidden_size=32, num_hidden_layers=2,
                                            num_attention_heads=2, intermediate_size=64, max_position_embeddings=514),
          pooling="cls", normalize=False),
)}


def word(i: int) -> str:
    return f"w{i}"


def _tokenizer(vocab_size: int, max_length: int):
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + [word(i) for i in range(vocab_size - len(SPECIALS))])}
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=max_length)


def build(shape: Shape, folder: Path, max_length: int = 512, seed: int = 0) -> Path:
    """Save the random model as a sentence-transformers folder under `folder`; return it."""
    import torch
    import transformers
    from transformers import AutoModel

    try:
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    except ImportError:  # sentence-transformers < 5.4
        from sentence_transformers.models import Normalize, Pooling, Transformer
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(seed)
    hf = Path(folder) / f"{shape.name}.hf"
    # pad id 0 for every shape (the tokenizer's); positions 0..max_length fit every config.
    config = getattr(transformers, shape.config)(pad_token_id=0, **{"max_position_embeddings": 512, **shape.dims})
    AutoModel.from_config(config).save_pretrained(hf)
    _tokenizer(shape.dims["vocab_size"], max_length).save_pretrained(hf)
    transformer = Transformer(str(hf), max_seq_length=max_length)
    modules = [transformer, Pooling(transformer.get_embedding_dimension(), pooling_mode=shape.pooling)]
    model = SentenceTransformer(modules=modules + ([Normalize()] if shape.normalize else []), device="cpu")
    out = Path(folder) / shape.name
    model.save(str(out))
    return out


def texts(n: int, tokens: int, vocab_size: int, seed: int = 0) -> list[str]:
    """`n` distinct texts of exactly `tokens` tokens each ([CLS] and [SEP] included)."""
    import random

    rng = random.Random(seed)
    words = vocab_size - len(SPECIALS)
    return [" ".join(word(rng.randrange(words)) for _ in range(max(1, tokens - 2))) for _ in range(n)]
