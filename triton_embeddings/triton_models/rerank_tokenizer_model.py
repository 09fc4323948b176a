"""Triton Python-backend model: the rerank ensemble's pair tokenizer step.

Inputs QUERY and DOCUMENT ([N, 1] BYTES, one pair per row); outputs the encoder's ids, mask and token
types plus TOKEN_COUNT and TRUNCATED. Knobs: `contract.PairTokenizerParams`.
"""

from __future__ import annotations

import triton_python_backend_utils as pb_utils

from triton_embeddings import contract as c
from triton_embeddings.triton_models import backend_utils as bu
from triton_embeddings.triton_models.pair_tokenize import PairTokenizer


def _pairs(request) -> tuple[list[str], list[str]]:
    queries = bu.input_strings(request, c.QUERY)
    documents = bu.input_strings(request, c.DOCUMENT, empty="send at least one pair")
    if len(queries) != len(documents):
        raise ValueError(f"{c.QUERY} has {len(queries)} rows, {c.DOCUMENT} {len(documents)}: one query per pair")
    return queries, documents


class TritonPythonModel:
    def initialize(self, args):
        config, folder = bu.model_config(args)
        self.tokenizer = PairTokenizer.from_config(config, folder)
        self.with_token_types = bu.declares_token_types(config)
        self.tokens = bu.tokenizer_counters(config)

    def _respond(self, request):
        queries, documents = _pairs(request)
        enc = self.tokenizer.pairs(queries, documents)
        self.tokens.add(enc.real_tokens, enc.padded_tokens)
        return pb_utils.InferenceResponse(bu.encoder_outputs(enc, self.with_token_types))

    def finalize(self):
        self.tokens.flush()

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._respond(request))
            except ValueError as exc:  # bad input fails this request only
                responses.append(bu.error_response(str(exc)))
        return responses
