"""Tokenization as sentence-transformers does it, plus length buckets so Triton can batch.

Plain module: the Triton tokenizer step and the unit tests both import it; it needs only
`tokenizers` and numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from tokenizers import Tokenizer

from triton_embeddings.contract import ParameterSet, TokenizerParams
from triton_embeddings.triton_models import spans


def bucket_length(length: int, max_length: int) -> int:
    """Round a padded length up to its bucket, so that texts of similar length share a shape.

    Triton's dynamic batcher only merges requests whose tensors have equal shapes; buckets give it
    equal shapes while keeping padding small: steps of 8 up to 64 tokens, 16 up to 128, 32 up to
    256, 64 beyond (at most ~1.25x padding past 32 tokens; multiples of 8 also suit tensor cores).
    """
    if length <= 0:
        return min(8, max_length)
    step = 8 if length <= 64 else 16 if length <= 128 else 32 if length <= 256 else 64
    return min(-(-length // step) * step, max_length)


def read_pad_id(tokenizer_file: str) -> int:
    """The pad id a `tokenizer.json` declares (0 when it declares none)."""
    padding = Tokenizer.from_file(tokenizer_file).padding
    return int(padding["pad_id"]) if padding else 0


@dataclass
class Encoded:
    """Token ids, attention mask and (optional) token types padded to one bucket length."""

    input_ids: np.ndarray  # int64 [n, L]
    attention_mask: np.ndarray  # int64 [n, L]
    token_type_ids: np.ndarray  # int64 [n, L]
    token_count: np.ndarray  # int32 [n, 1]: real tokens (special tokens included)
    truncated: np.ndarray  # bool [n, 1]: text was cut at max_length

    @property
    def padded_tokens(self) -> int:
        return int(self.input_ids.size)

    @property
    def real_tokens(self) -> int:
        return int(self.token_count.sum())


class TextTokenizer:
    """A Hugging Face `tokenizers` tokenizer configured like the sentence-transformers model.

    The `tokenizer.json` may carry its own truncation and padding (all-MiniLM-L6-v2's truncates at
    128 while sentence-transformers uses max_seq_length 256): both are replaced here.
    """

    params_type: ClassVar[type[ParameterSet]] = TokenizerParams  # what its step's config carries

    def __init__(self, tokenizer_file: str, max_length: int, prompt: str = "", pad_id: int | None = None,
                 lowercase: bool = False):
        self.tokenizer = Tokenizer.from_file(tokenizer_file)
        self.max_length = int(max_length)
        self.prompt = prompt
        self.lowercase = lowercase
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.max_length)
        self.pad_id = read_pad_id(tokenizer_file) if pad_id is None else int(pad_id)
        self.untruncated = Tokenizer.from_file(tokenizer_file)
        self.untruncated.no_padding()
        self.untruncated.no_truncation()

    @classmethod
    def _options(cls, params: TokenizerParams) -> dict:
        """The constructor's arguments of this kind of tokenizer alone."""
        return {"prompt": params.prompt}

    @classmethod
    def from_params(cls, params, folder: str | Path):
        """The tokenizer a tokenizer step's parameters describe; `folder` holds its `tokenizer_file`."""
        return cls(str(Path(folder) / params.tokenizer_file), params.max_seq_length, pad_id=params.pad_id,
                   lowercase=params.lowercase, **cls._options(params))

    @classmethod
    def from_config(cls, config: dict, folder: str | Path):
        """The tokenizer a tokenizer step's config (Triton's JSON form) describes."""
        return cls.from_params(cls.params_type.from_config(config), folder)

    def _full(self, texts: list[str], prompts: list[str] | None) -> tuple[list[str], list[str]]:
        """Prompt + text (the text lower-cased when the model does), and the prompt of each."""
        if self.lowercase:
            texts = [t.lower() for t in texts]
        if prompts is None:
            if not self.prompt:
                return texts, [""] * len(texts)
            prompts = [self.prompt] * len(texts)
        return [p + t for p, t in zip(prompts, texts)], prompts

    def encode(self, texts: list[str], prompts: list[str] | None = None, sides: list[str] | None = None) -> list:
        """Tokenize (in parallel, in Rust), truncated to max_length.

        `prompts`: per-text prompt (default: the model's default prompt); `sides`: per-text truncation
        side, END (keep the start, the default) or START (keep the end; specials and prompt are kept).
        """
        full, prompts = self._full(texts, prompts)
        out = self.tokenizer.encode_batch(full, add_special_tokens=True)
        if not sides or "START" not in sides:
            return out
        starts = [i for i, s in enumerate(sides) if s == "START" and out[i].overflowing]
        whole = self.untruncated.encode_batch([full[i] for i in starts], add_special_tokens=True)
        for i, enc in zip(starts, whole):
            out[i] = spans.keep_end(enc, len(prompts[i]), self.max_length)
        return out

    def windows(self, texts: list[str], prompts: list[str] | None = None) -> list[list[tuple[int, int, int]]]:
        """Per text, the overlapping windows (start char, end char, tokens) that fit max_length.

        Characters count in the text as given; lower-casing that changes a text's length (rare: `İ`)
        shifts them.
        """
        full, prompts = self._full(texts, prompts)
        whole = self.untruncated.encode_batch(full, add_special_tokens=True)
        return [spans.windows(enc, len(p), self.max_length) for enc, p in zip(whole, prompts)]

    def pad(self, encodings: list, length: int | None = None) -> Encoded:
        """Pad encodings to `length` (default: the bucket of the longest)."""
        lengths = [len(e.ids) for e in encodings]
        if length is None:
            length = bucket_length(max(lengths, default=0), self.max_length)
        n = len(encodings)
        ids = np.full((n, length), self.pad_id, dtype=np.int64)
        mask = np.zeros((n, length), dtype=np.int64)
        types = np.zeros((n, length), dtype=np.int64)
        for i, enc in enumerate(encodings):
            k = len(enc.ids)
            ids[i, :k] = enc.ids
            mask[i, :k] = 1
            types[i, :k] = enc.type_ids
        return Encoded(
            input_ids=ids,
            attention_mask=mask,
            token_type_ids=types,
            token_count=np.asarray(lengths, dtype=np.int32).reshape(n, 1),
            truncated=np.asarray([bool(e.overflowing) for e in encodings], dtype=bool).reshape(n, 1),
        )

    def __call__(self, texts: list[str]) -> Encoded:
        return self.pad(self.encode(texts))
