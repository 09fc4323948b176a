"""Triton Python-backend model: the ensemble's tokenizer step.

The model repository's `model.py` re-exports `TritonPythonModel` from here. Knobs come from
`config.pbtxt` `parameters`, read as `contract.TokenizerParams` (`TextTokenizer.from_config`).
"""

from __future__ import annotations

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

from triton_embeddings import contract as c
from triton_embeddings.triton_models.backend_utils import TokenCounters
from triton_embeddings.triton_models.tokenize import TextTokenizer


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        folder = Path(args["model_repository"]) / args["model_version"]
        self.tokenizer = TextTokenizer.from_config(config, folder)
        self.with_token_types = any(o["name"] == c.TOKEN_TYPE_IDS for o in config["output"])
        self.tokens = TokenCounters(
            "embeddings_tokenizer_tokens_total",
            "Tokens the tokenizer sent to the encoder: kind=real (text tokens) or padded (shape)",
            config["name"],
        )

    def _texts(self, request) -> list[str]:
        raw = pb_utils.get_input_tensor_by_name(request, c.TEXT).as_numpy().reshape(-1)
        if raw.size == 0:
            raise ValueError(f"{c.TEXT} is empty: send at least one text")
        texts = []
        for i, item in enumerate(raw):
            if isinstance(item, bytes):
                try:
                    item = item.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise ValueError(f"{c.TEXT}[{i}] is not valid UTF-8 (byte {exc.start})") from None
            texts.append(str(item))
        return texts

    def execute(self, requests):
        # Decode every request, then tokenize all texts of this dynamic batch in one parallel call.
        per_request: list[list[str] | Exception] = []
        for request in requests:
            try:
                per_request.append(self._texts(request))
            except ValueError as exc:
                per_request.append(exc)
        flat = [t for texts in per_request if isinstance(texts, list) for t in texts]
        encodings = iter(self.tokenizer.encode(flat))

        ready = []
        for request, texts in zip(requests, per_request):
            sender = request.get_response_sender()
            if isinstance(texts, Exception):
                ready.append((0, sender, pb_utils.InferenceResponse(error=pb_utils.TritonError(str(texts)))))
                continue
            enc = self.tokenizer.pad([next(encodings) for _ in texts])
            self.tokens.add(enc.real_tokens, enc.padded_tokens)
            outputs = [
                pb_utils.Tensor(c.INPUT_IDS, enc.input_ids),
                pb_utils.Tensor(c.ATTENTION_MASK, enc.attention_mask),
                pb_utils.Tensor(c.TOKEN_COUNT, enc.token_count),
                pb_utils.Tensor(c.TRUNCATED, enc.truncated),
            ]
            if self.with_token_types:
                outputs.append(pb_utils.Tensor(c.TOKEN_TYPE_IDS, enc.token_type_ids))
            ready.append((enc.input_ids.shape[1], sender, pb_utils.InferenceResponse(outputs)))

        # Send responses grouped by padded length: the encoder's dynamic batcher merges consecutive
        # requests of equal shape and cuts a batch at the first different one, so arrival order
        # decides how well it batches.
        for _, sender, response in sorted(ready, key=lambda item: item[0]):
            sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None

