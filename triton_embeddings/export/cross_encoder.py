"""Cross-encoders (rerankers): recognise them from their own files, read what `CrossEncoder` does with them,
export the classifier to ONNX and build the score step.

A cross-encoder is either a sentence-transformers `CrossEncoder` folder (`config_sentence_transformers.json`
with `"model_type": "CrossEncoder"`) or a Hugging Face `*ForSequenceClassification` model with one label
(the ms-marco and bge-reranker families); sentence-transformers loads both as `CrossEncoder`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from triton_embeddings import contract as c
from triton_embeddings.export.model_spec import UnsupportedModelError

log = logging.getLogger(__name__)

# CrossEncoder's activation (a torch module class name) -> the ONNX op that computes it.
ACTIVATIONS = {"Sigmoid": "sigmoid", "Identity": "identity", "Tanh": "tanh"}
_ONNX_OPS = {"sigmoid": "Sigmoid", "identity": "Identity", "tanh": "Tanh"}


def _read_json(source: str, name: str) -> dict | None:
    """`name` from a local folder or a hub id (through the local cache when offline); None if absent."""
    folder = Path(source)
    if folder.is_dir():
        path = folder / name
        return json.loads(path.read_text()) if path.is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(source, name)).read_text())
    except Exception:  # noqa: BLE001 - a missing file or an unreachable hub both mean "not this kind"
        return None


def is_cross_encoder(source: str) -> bool:
    """True when the model's own files say it is a cross-encoder with one output (a relevance score)."""
    st_config = _read_json(source, "config_sentence_transformers.json") or {}
    if st_config.get("model_type") == "CrossEncoder":
        return True
    if _read_json(source, "modules.json"):
        return False  # a SentenceTransformer (embedding model)
    config = _read_json(source, "config.json") or {}
    architectures = config.get("architectures") or []
    labels = config.get("num_labels") or len(config.get("id2label") or {}) or 2
    return any(a.endswith("ForSequenceClassification") for a in architectures) and labels == 1


@dataclass
class RerankSpec:
    """Everything the export needs to know about a cross-encoder."""

    source: str
    max_seq_length: int
    activation: str  # sigmoid | identity | tanh: what CrossEncoder.predict applies to the logit
    pad_id: int = 0
    truncation: str = "longest_first"  # what CrossEncoder's tokenizer call uses


def read_rerank_spec(model, source: str, max_seq_length: int | None = None) -> RerankSpec:
    """Build a `RerankSpec` from a loaded `CrossEncoder`; refuse what the ensemble would not reproduce."""
    if model.num_labels != 1:
        raise UnsupportedModelError(
            f"the cross-encoder has {model.num_labels} labels; rerank serves one relevance score per pair"
        )
    activation = ACTIVATIONS.get(type(model.activation_fn).__name__)
    if activation is None:
        raise UnsupportedModelError(
            f"activation {type(model.activation_fn).__name__} is not supported (supported: {sorted(ACTIVATIONS)})"
        )
    if getattr(model, "default_prompt_name", None):
        raise UnsupportedModelError("cross-encoders with a default prompt are not supported")
    limit = int(model.max_length)
    model_max = getattr(model.model.config, "max_position_embeddings", None) or limit
    if max_seq_length is not None:
        if max_seq_length > model_max:
            raise UnsupportedModelError(
                f"--max-seq-length {max_seq_length} exceeds the model's position embeddings ({model_max})"
            )
        limit = max_seq_length
    pad = model.tokenizer.pad_token_id
    return RerankSpec(source=source, max_seq_length=min(limit, model_max), activation=activation,
                      pad_id=int(pad if pad is not None else 0))


def export_classifier(model, out_dir: Path) -> Path:
    """Write `model.onnx`: input_ids, attention_mask[, token_type_ids] -> `logits` [batch, 1]."""
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    tok = model.tokenizer(["a b c", "d"], ["e f", "g h i j"], padding=True, return_tensors="pt")
    names = [n for n in (c.ONNX_INPUT_IDS, c.ONNX_ATTENTION_MASK, c.ONNX_TOKEN_TYPE_IDS) if n in tok]
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes[c.CLASSIFIER_OUTPUT] = {0: "batch"}

    class Logits(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            return self.inner(**dict(zip(names, args))).logits

    target = out_dir / "model.onnx"
    with torch.no_grad():
        torch.onnx.export(
            Logits(model.model.to("cpu")).eval(), tuple(tok[n] for n in names), str(target),
            input_names=names, output_names=[c.CLASSIFIER_OUTPUT], dynamic_axes=axes, dynamo=False,
        )
    return target


def build_score_step(activation: str) -> onnx.ModelProto:
    """LOGIT_IN [batch, 1] -> SCORE (the activation, as CrossEncoder.predict applies it), LOGIT (as is)."""
    if activation not in _ONNX_OPS:
        raise ValueError(f"activation must be one of {sorted(_ONNX_OPS)}")
    dims = ["batch", 1]
    graph = helper.make_graph(
        [
            helper.make_node(_ONNX_OPS[activation], [c.SCORE_STEP_INPUT], [c.SCORE], name="activation"),
            helper.make_node("Identity", [c.SCORE_STEP_INPUT], [c.LOGIT], name="raw_logit"),
        ],
        "rerank_score",
        [helper.make_tensor_value_info(c.SCORE_STEP_INPUT, TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info(c.SCORE, TensorProto.FLOAT, dims),
         helper.make_tensor_value_info(c.LOGIT, TensorProto.FLOAT, dims)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="embeddings-export")
    model.ir_version = 8  # readable by the ONNX Runtime in Triton 2.51's backend
    onnx.checker.check_model(model)
    return model
