"""Tokenization of (query, document) pairs as a cross-encoder does it.

Plain module (tokenizers and numpy): the Triton rerank tokenizer step, the export's verifier and the unit
tests import it. `CrossEncoder.predict` calls the fast Hugging Face tokenizer with text pairs and
`truncation="longest_first"`: tokens come off the longer of the two texts until the pair fits, so a long
document is cut before a short query is touched. The Rust `tokenizers` library implements that strategy
itself, so encoding pairs here gives the same ids. `only_second` (cut only the document) is the other choice.
"""

from __future__ import annotations

from triton_embeddings.contract import PairTokenizerParams
from triton_embeddings.triton_models.tokenize import Encoded, TextTokenizer

TRUNCATION_STRATEGIES = ("longest_first", "only_second")


class PairTokenizer(TextTokenizer):
    """Encodes (query, document) pairs: `[CLS] query [SEP] document [SEP]`, token types 0 then 1."""

    params_type = PairTokenizerParams

    def __init__(self, tokenizer_file: str, max_length: int, truncation: str = "longest_first",
                 pad_id: int | None = None, lowercase: bool = False):
        if truncation not in TRUNCATION_STRATEGIES:
            raise ValueError(f"truncation must be one of {TRUNCATION_STRATEGIES}, not {truncation!r}")
        super().__init__(tokenizer_file, max_length, pad_id=pad_id, lowercase=lowercase)
        self.truncation = truncation
        self.tokenizer.enable_truncation(max_length=self.max_length, strategy=truncation)

    @classmethod
    def _options(cls, params: PairTokenizerParams) -> dict:
        return {"truncation": params.truncation}

    def encode_pairs(self, queries: list[str], documents: list[str]) -> list:
        """Tokenize pairs (in parallel, in Rust); returns `tokenizers.Encoding`s cut to max_length."""
        if len(queries) != len(documents):
            raise ValueError(f"{len(queries)} queries for {len(documents)} documents")
        if self.lowercase:
            queries, documents = [q.lower() for q in queries], [d.lower() for d in documents]
        try:
            return self.tokenizer.encode_batch(list(zip(queries, documents)), add_special_tokens=True)
        except Exception as exc:  # tokenizers raises a bare Exception when only_second cannot fit the query
            raise ValueError(f"cannot truncate the pair to {self.max_length} tokens: {exc}") from None

    def pairs(self, queries: list[str], documents: list[str]) -> Encoded:
        return self.pad(self.encode_pairs(queries, documents))

