"""Triton Python-backend model: the rerank ensemble's pair tokenizer step.

Inputs QUERY and DOCUMENT ([N, 1] BYTES, one pair per row); outputs the encoder's ids, mask and token
types plus TOKEN_COUNT and TRUNCATED. Knobs: `contract.PairTokenizerParams`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_embeddings import contract as c
from triton_embeddings.triton_models.backend_utils import TokenCounters
from triton_embeddings.triton_models.pair_tokenize import PairTokenizer


def _strings(request, name: str) -> list[str]:
    raw = pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)
    out = []
    for i, item in enumerate(raw):
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{name}[{i}] is not valid UTF-8 (byte {exc.start})") from None
        out.append(str(item))
    return out


def _pairs(request) -> tuple[list[str], list[str]]:
    queries, documents = _strings(request, c.QUERY), _strings(request, c.DOCUMENT)
    if not documents:
        raise ValueError(f"{c.DOCUMENT} is empty: send at least one pair")
    if len(queries) != len(documents):
        raise ValueError(f"{c.QUERY} has {len(queries)} rows, {c.DOCUMENT} {len(documents)}: one query per pair")
    return queries, documents


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        folder = Path(args["model_repository"]) / args["model_version"]
        self.tokenizer = PairTokenizer.from_config(config, folder)
        self.with_token_types = any(o["name"] == c.TOKEN_TYPE_IDS for o in config["output"])
        self.tokens = TokenCounters(
            "embeddings_tokenizer_tokens_total",
            "Tokens the tokenizer sent to the encoder: kind=real (text tokens) or padded (shape)",
            config["name"],
        )

    def _respond(self, request):
        queries, documents = _pairs(request)
        enc = self.tokenizer.pairs(queries, documents)
        self.tokens.add(enc.real_tokens, enc.padded_tokens)
        outputs = [
            pb_utils.Tensor(c.INPUT_IDS, enc.input_ids),
            pb_utils.Tensor(c.ATTENTION_MASK, enc.attention_mask),
            pb_utils.Tensor(c.TOKEN_COUNT, enc.token_count),
            pb_utils.Tensor(c.TRUNCATED, np.ascontiguousarray(enc.truncated)),
        ]
        if self.with_token_types:
            outputs.append(pb_utils.Tensor(c.TOKEN_TYPE_IDS, enc.token_type_ids))
        return pb_utils.InferenceResponse(outputs)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._respond(request))
            except ValueError as exc:  # bad input fails this request only
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses
