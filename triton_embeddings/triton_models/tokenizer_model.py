"""Triton Python-backend model: the ensemble's tokenizer step.

The model repository's `model.py` re-exports `TritonPythonModel` from here. Knobs come from
`config.pbtxt` `parameters`: `tokenizer_file`, `max_seq_length`, `prompt`, `prompts`, `default_prompt_name`,
`lowercase`, `pad_id`. Optional per-row inputs `PROMPT_NAME` and `TRUNCATE` choose the prompt and the
truncation side; the `WINDOW_SPANS` output is computed only when a client requests it (docs/contract.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_embeddings import contract
from triton_embeddings.triton_models.backend_utils import TokenCounters
from triton_embeddings.triton_models.backend_utils import parameter as _parameter
from triton_embeddings.triton_models.tokenize import TextTokenizer


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        folder = Path(args["model_repository"]) / args["model_version"]
        self.lowercase = _parameter(config, "lowercase", "false") == "true"
        self.tokenizer = TextTokenizer(
            str(folder / _parameter(config, "tokenizer_file", "tokenizer.json")),
            max_length=int(_parameter(config, "max_seq_length", "512")),
            prompt=_parameter(config, "prompt"),
            pad_id=int(_parameter(config, "pad_id", "0")),
        )
        params = contract.TokenizerParams.from_config(config)
        self.prompts, self.default_prompt_name = dict(params.prompts), params.default_prompt_name
        self.with_token_types = any(o["name"] == "TOKEN_TYPE_IDS" for o in config["output"])
        self.tokens = TokenCounters(
            "embeddings_tokenizer_tokens_total",
            "Tokens the tokenizer sent to the encoder: kind=real (text tokens) or padded (shape)",
            config["name"],
        )

    def _texts(self, request) -> list[str]:
        raw = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
        if raw.size == 0:
            raise ValueError("TEXT is empty: send at least one text")
        texts = []
        for i, item in enumerate(raw):
            if isinstance(item, bytes):
                try:
                    item = item.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise ValueError(f"TEXT[{i}] is not valid UTF-8 (byte {exc.start})") from None
            texts.append(item.lower() if self.lowercase else str(item))
        return texts

    def _row_strings(self, request, name: str, n: int) -> list[str]:
        """An optional BYTES [n, 1] (or [1, 1], broadcast) input as strings; absent: n empty strings."""
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            return [""] * n
        raw = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in tensor.as_numpy().reshape(-1)]
        if len(raw) == 1:
            return raw * n
        if len(raw) != n:
            raise ValueError(f"{name} has {len(raw)} rows; TEXT has {n}")
        return raw

    def _options(self, request, n: int) -> tuple[list[str], list[str]]:
        """Per-row prompt texts and truncation sides; unknown values are the client's error."""
        try:
            prompts = [
                contract.resolve_prompt(name, self.prompts, self.default_prompt_name) if name else self.tokenizer.prompt
                for name in self._row_strings(request, contract.PROMPT_NAME, n)
            ]
        except contract.UnknownPromptError as exc:
            names = ", ".join(contract.prompt_names(self.prompts))
            raise ValueError(f"unknown {contract.PROMPT_NAME} {exc}; this model accepts: {names}") from None
        sides = [s.upper() or "END" for s in self._row_strings(request, contract.TRUNCATE, n)]
        bad = [s for s in sides if s not in contract.TRUNCATE_SIDES]
        if bad:
            raise ValueError(f"unknown {contract.TRUNCATE} {bad[0]!r}; use one of {contract.TRUNCATE_SIDES}")
        return prompts, sides

    def _windows(self, texts: list[str], prompts: list[str]) -> np.ndarray:
        spans = self.tokenizer.windows(texts, prompts)
        out = np.full((len(texts), max(len(s) for s in spans), 3), -1, dtype=np.int32)
        for i, rows in enumerate(spans):
            out[i, : len(rows)] = rows
        return out

    def _prepare(self, request) -> tuple[list[str], list[str], list[str]]:
        texts = self._texts(request)
        prompts, sides = self._options(request, len(texts))
        return texts, prompts, sides

    def execute(self, requests):
        # Decode every request, then tokenize all texts of this dynamic batch in one parallel call.
        prepared: list[tuple[list[str], list[str], list[str]] | Exception] = []
        for request in requests:
            try:
                prepared.append(self._prepare(request))
            except ValueError as exc:
                prepared.append(exc)
        ok = [p for p in prepared if not isinstance(p, Exception)]
        flat = [t for texts, _, _ in ok for t in texts]
        flat_prompts = [p for _, prompts, _ in ok for p in prompts]
        flat_sides = [s for _, _, sides in ok for s in sides]
        encodings = iter(self.tokenizer.encode(flat, flat_prompts, flat_sides))

        ready = []
        for request, item in zip(requests, prepared):
            sender = request.get_response_sender()
            if isinstance(item, Exception):
                ready.append((0, sender, pb_utils.InferenceResponse(error=pb_utils.TritonError(str(item)))))
                continue
            texts, prompts, sides = item
            enc = self.tokenizer.pad([next(encodings) for _ in texts])
            if "NONE" in sides and any(t and s == "NONE" for t, s in zip(enc.truncated.reshape(-1), sides)):
                error = pb_utils.TritonError(
                    f"an input is longer than the model's maximum of {self.tokenizer.max_length} tokens "
                    f"and {contract.TRUNCATE} is NONE"
                )
                ready.append((0, sender, pb_utils.InferenceResponse(error=error)))
                continue
            self.tokens.add(enc.real_tokens, enc.padded_tokens)
            outputs = [
                pb_utils.Tensor("INPUT_IDS", enc.input_ids),
                pb_utils.Tensor("ATTENTION_MASK", enc.attention_mask),
                pb_utils.Tensor("TOKEN_COUNT", enc.token_count),
                pb_utils.Tensor("TRUNCATED", enc.truncated),
            ]
            if self.with_token_types:
                outputs.append(pb_utils.Tensor("TOKEN_TYPE_IDS", enc.token_type_ids))
            if contract.WINDOW_SPANS in request.requested_output_names():
                outputs.append(pb_utils.Tensor(contract.WINDOW_SPANS, self._windows(texts, prompts)))
            ready.append((enc.input_ids.shape[1], sender, pb_utils.InferenceResponse(outputs)))

        # Send responses grouped by padded length: the encoder's dynamic batcher merges consecutive
        # requests of equal shape and cuts a batch at the first different one, so arrival order
        # decides how well it batches.
        for _, sender, response in sorted(ready, key=lambda item: item[0]):
            sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
