"""The direct path: the gateway tokenizes (the Rust `tokenizers`, configured exactly as the model's tokenizer
step) and calls the embedded encoder with token ids, asking for EMBEDDING alone, which the step pools itself.
One Triton hop instead of the ensemble's three; vectors and token counts are the ensemble's (docs/contract.md).

A route exists for a model when the gateway can read its tokenizer files (`EMBEDDINGS_MODEL_REPOSITORY`), the
repository holds the export Triton serves (same encoder hash), and its encoder step declares EMBEDDING.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf import json_format, text_format
from tritonclient.grpc import InferInput
from tritonclient.grpc import model_config_pb2 as mc

from triton_embeddings import contract as c
from triton_embeddings.triton_models.tokenize import Encoded, TextTokenizer

log = logging.getLogger("gateway.direct")


@dataclass
class DirectRoute:
    """How to embed one model's texts without the ensemble: its tokenizer and its encoder step."""

    encoder: str  # the encoder step's Triton model name
    inputs: tuple[str, ...]  # the encoder's input names, in its config's order
    tokenizer: TextTokenizer
    prompts: dict[str, str]
    default_prompt_name: str

    def _prompts(self, names: list[str] | None) -> list[str] | None:
        if names is None:
            return None
        try:
            return [c.resolve_prompt(n, self.prompts, self.default_prompt_name) if n else self.tokenizer.prompt
                    for n in names]
        except c.UnknownPromptError as exc:  # the HTTP room validates names first: this is a safety net
            raise ValueError(f"unknown {c.PROMPT_NAME} {exc}") from None

    def encode(self, texts: list[str], options: dict[str, list[str]] | None = None) -> Encoded:
        """Token ids as the tokenizer step makes them (prompts, truncation side), padded to one length."""
        options = options or {}
        sides = options.get(c.TRUNCATE)
        if sides is not None:
            sides = [s.upper() or "END" for s in sides]
        return self.tokenizer.pad(self.tokenizer.encode(texts, self._prompts(options.get(c.PROMPT_NAME)), sides))

    def windows(self, texts: list[str], prompt_names: list[str] | None) -> list[list[tuple[int, int, int]]]:
        return self.tokenizer.windows(texts, self._prompts(prompt_names))

    def infer_inputs(self, enc: Encoded) -> list[InferInput]:
        arrays = {c.ONNX_INPUT_IDS: enc.input_ids, c.ONNX_ATTENTION_MASK: enc.attention_mask,
                  c.ONNX_TOKEN_TYPE_IDS: enc.token_type_ids}
        out = []
        for name in self.inputs:
            tensor = InferInput(name, list(arrays[name].shape), "INT64")
            tensor.set_data_from_numpy(np.ascontiguousarray(arrays[name]))
            out.append(tensor)
        return out


def _repository_hash(repository: Path, name: str) -> str:
    """The encoder hash the repository's copy of the ensemble declares ("" when unreadable)."""
    try:
        text = (repository / name / "config.pbtxt").read_text(encoding="utf-8")
        config = json_format.MessageToDict(text_format.Parse(text, mc.ModelConfig()), preserving_proto_field_name=True)
        return c.EnsembleParams.from_config(config).encoder_sha256
    except (OSError, text_format.ParseError, c.ContractError):
        return ""


def route_from_configs(repository: Path, ensemble: dict, encoder: dict, tokenizer: dict) -> DirectRoute | None:
    """A model's route from the configs (Triton's JSON form) of its ensemble, encoder and tokenizer steps; None
    when the direct path cannot serve it exactly as the ensemble does (the reason is logged)."""
    if c.EMBEDDING not in {o.get("name") for o in encoder.get("output", [])}:
        return None  # exported before the fused pooler, or not the embedded target: the ensemble serves it
    name, served = ensemble.get("name", ""), c.EnsembleParams.from_config(ensemble).encoder_sha256
    if not served or _repository_hash(repository, name) != served:
        log.warning("model %s: %s does not hold the export Triton serves; using the ensemble", name, repository)
        return None
    try:
        params = c.TokenizerParams.from_config(tokenizer)
        text_tokenizer = TextTokenizer.from_params(params, repository / tokenizer["name"] / "1")
    except Exception as exc:  # noqa: BLE001 - an unreadable tokenizer: fall back to the ensemble, keep serving
        log.warning("model %s: tokenizer not readable (%s); using the ensemble", name, type(exc).__name__)
        return None
    inputs = tuple(i["name"] for i in encoder.get("input", []))
    return DirectRoute(encoder["name"], inputs, text_tokenizer, dict(params.prompts), params.default_prompt_name)
