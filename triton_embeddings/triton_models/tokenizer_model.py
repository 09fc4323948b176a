"""Triton Python-backend model: the ensemble's tokenizer step.

The model repository's `model.py` re-exports `TritonPythonModel` from here. Knobs come from
`config.pbtxt` `parameters`, read as `contract.TokenizerParams` (`TextTokenizer.from_config`). Optional
per-row inputs `PROMPT_NAME` and `TRUNCATE` choose the prompt and the truncation side; the `WINDOW_SPANS`
output is computed only when a client requests it (docs/contract.md).
"""

from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_embeddings import contract as c
from triton_embeddings.triton_models import backend_utils as bu
from triton_embeddings.triton_models.tokenize import TextTokenizer


class TritonPythonModel:
    def initialize(self, args):
        config, folder = bu.model_config(args)
        self.tokenizer = TextTokenizer.from_config(config, folder)
        params = c.TokenizerParams.from_config(config)
        self.prompts, self.default_prompt_name = dict(params.prompts), params.default_prompt_name
        self.with_token_types = bu.declares_token_types(config)
        self.tokens = bu.tokenizer_counters(config)

    def _row_strings(self, request, name: str, n: int) -> list[str] | None:
        """An optional BYTES [n, 1] (or [1, 1], broadcast) input as strings; None when absent."""
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            return None
        raw = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in tensor.as_numpy().reshape(-1)]
        if len(raw) == 1:
            return raw * n
        if len(raw) != n:
            raise ValueError(f"{name} has {len(raw)} rows; {c.TEXT} has {n}")
        return raw

    def _prompts(self, names: list[str]) -> list[str]:
        try:
            return [c.resolve_prompt(n, self.prompts, self.default_prompt_name) if n else self.tokenizer.prompt
                    for n in names]
        except c.UnknownPromptError as exc:
            accepted = ", ".join(c.prompt_names(self.prompts))
            raise ValueError(f"unknown {c.PROMPT_NAME} {exc}; this model accepts: {accepted}") from None

    def _prepare(self, request) -> tuple[list[str], list[str] | None, list[str] | None]:
        """Texts, per-row prompt texts and truncation sides (None: the defaults, as in plain requests)."""
        texts = bu.input_strings(request, c.TEXT, empty="send at least one text")
        names = self._row_strings(request, c.PROMPT_NAME, len(texts))
        sides = self._row_strings(request, c.TRUNCATE, len(texts))
        if sides is not None:
            sides = [s.upper() or "END" for s in sides]
            bad = [s for s in sides if s not in c.TRUNCATE_SIDES]
            if bad:
                raise ValueError(f"unknown {c.TRUNCATE} {bad[0]!r}; use one of {c.TRUNCATE_SIDES}")
        return texts, None if names is None else self._prompts(names), sides

    def _encode_all(self, prepared: list) -> list:
        """Tokenize every text of this dynamic batch in one parallel call."""
        ok = [p for p in prepared if not isinstance(p, Exception)]
        texts = [t for item in ok for t in item[0]]
        if all(item[1] is None and item[2] is None for item in ok):  # plain requests: the default path
            return self.tokenizer.encode(texts)
        prompts = [p for t, ps, _ in ok for p in (ps or [self.tokenizer.prompt] * len(t))]
        sides = [s for t, _, ss in ok for s in (ss or ["END"] * len(t))]
        return self.tokenizer.encode(texts, prompts, sides)

    def _windows(self, texts: list[str], prompts: list[str] | None) -> np.ndarray:
        spans = self.tokenizer.windows(texts, prompts)
        out = np.full((len(texts), max(len(s) for s in spans), 3), -1, dtype=np.int32)
        for i, rows in enumerate(spans):
            out[i, : len(rows)] = rows
        return out

    def _response(self, request, item, encodings) -> tuple[int, object, tuple[int, int]]:
        """(padded length, response, (real, padded) tokens) for one request."""
        if isinstance(item, Exception):
            return 0, bu.error_response(str(item)), (0, 0)
        texts, prompts, sides = item
        enc = self.tokenizer.pad([next(encodings) for _ in texts])
        if sides and any(t and s == "NONE" for t, s in zip(enc.truncated.reshape(-1), sides)):
            message = (f"an input is longer than the model's maximum of {self.tokenizer.max_length} tokens "
                       f"and {c.TRUNCATE} is NONE")
            return 0, bu.error_response(message), (0, 0)
        outputs = bu.encoder_outputs(enc, self.with_token_types)
        if c.WINDOW_SPANS in request.requested_output_names():
            outputs.append(pb_utils.Tensor(c.WINDOW_SPANS, self._windows(texts, prompts)))
        return enc.input_ids.shape[1], pb_utils.InferenceResponse(outputs), (enc.real_tokens, enc.padded_tokens)

    def finalize(self):
        self.tokens.flush()

    def execute(self, requests):
        prepared: list = []
        for request in requests:
            try:
                prepared.append(self._prepare(request))
            except ValueError as exc:
                prepared.append(exc)
        encodings = iter(self._encode_all(prepared))
        ready = []
        real = padded = 0
        for request, item in zip(requests, prepared):
            length, response, tokens = self._response(request, item, encodings)
            ready.append((length, request.get_response_sender(), response))
            real, padded = real + tokens[0], padded + tokens[1]

        self.tokens.add(real, padded)  # sent to Triton at most once a second
        # Send responses grouped by padded length: the encoder's dynamic batcher merges consecutive
        # requests of equal shape and cuts a batch at the first different one, so arrival order
        # decides how well it batches.
        for _, sender, response in sorted(ready, key=lambda item: item[0]):
            sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
