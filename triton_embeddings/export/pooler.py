"""Generate the pooling step as a small ONNX model (mask-aware; L2-normalizes when the model does)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from triton_embeddings.contract import ATTENTION_MASK, EMBEDDING, TOKEN_EMBEDDINGS
from triton_embeddings.export.model_spec import POOLING_MODES

OPSET = 18


class _Graph:
    """Nodes and constants of the graph being built."""

    def __init__(self):
        self.nodes: list = []
        self.inits: list = []

    def const(self, name: str, value, dtype=np.float32) -> str:
        self.inits.append(onnx.numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output


def _mean(g: _Graph, emb: str, mask: str, mask3: str, axis1: str, sqrt_len: bool) -> str:
    summed = g.node("ReduceSum", [g.node("Mul", [emb, mask3], "masked"), axis1], "summed", keepdims=0)
    count = g.node("ReduceSum", [mask3, axis1], "count", keepdims=0)  # [N, 1]
    count = g.node("Max", [count, g.const("min_count", 1e-9)], "count_safe")
    if sqrt_len:
        count = g.node("Sqrt", [count], "count_sqrt")
    return g.node("Div", [summed, count], "pooled")


def _max(g: _Graph, emb: str, mask: str, mask3: str, axis1: str) -> str:
    # Padding positions get -1e9, as sentence-transformers does, before the max.
    inverse = g.node("Sub", [g.const("one", 1.0), mask3], "inv")
    penalty = g.node("Mul", [inverse, g.const("big", -1e9)], "penalty")
    return g.node("ReduceMax", [g.node("Add", [emb, penalty], "penalised"), axis1], "pooled", keepdims=0)


def _last_token(g: _Graph, emb: str, mask: str, mask3: str, axis1: str) -> str:
    """The last position whose mask is 1 (right padding)."""
    lengths = g.node("ReduceSum", [mask, axis1], "lengths", keepdims=1)
    last = g.node("Sub", [lengths, g.const("onef", 1.0)], "lastf")
    last = g.node("Cast", [g.node("Max", [last, g.const("zero", 0.0)], "last_clip")], "last", to=TensorProto.INT64)
    shape = g.node("Shape", [emb], "emb_shape")
    hidden_dim = g.node("Slice", [shape, g.const("s2", [2], np.int64), g.const("s3", [3], np.int64)], "hidden_dim")
    one = g.const("one_i", [1], np.int64)
    target = g.node("Concat", [one, one, hidden_dim], "target", axis=0)  # broadcast [N, 1, 1] -> [N, 1, H]
    last3 = g.node("Unsqueeze", [last, g.const("axis2", [2], np.int64)], "last3")
    gathered = g.node("GatherElements", [emb, g.node("Expand", [last3, target], "index")], "gathered", axis=1)
    return g.node("Squeeze", [gathered, axis1], "pooled")


def _cls(g: _Graph, emb: str, mask: str, mask3: str, axis1: str) -> str:
    return g.node("Gather", [emb, g.const("first", 0, np.int64)], "pooled", axis=1)


# Every pooling mode and the graph that computes it: a mode without an entry is refused, never built as another.
POOLERS = {
    "mean": lambda g, emb, mask, mask3, axis1: _mean(g, emb, mask, mask3, axis1, sqrt_len=False),
    "mean_sqrt_len_tokens": lambda g, emb, mask, mask3, axis1: _mean(g, emb, mask, mask3, axis1, sqrt_len=True),
    "cls": _cls,
    "max": _max,
    "lasttoken": _last_token,
}


def _pool(g: _Graph, mode: str, emb: str, mask: str, mask3: str, axis1: str) -> str:
    if mode not in POOLERS:
        raise ValueError(f"unknown pooling mode {mode!r} (known: {sorted(POOLERS)})")
    return POOLERS[mode](g, emb, mask, mask3, axis1)


def build_pooler(mode: str, normalize: bool, hidden: int, embeddings_type: int = TensorProto.FLOAT):
    """TOKEN_EMBEDDINGS [N, L, H] and ATTENTION_MASK [N, L] (int64) -> EMBEDDING [N, H] float32."""
    if mode not in POOLING_MODES or mode not in POOLERS:
        raise ValueError(f"unknown pooling mode {mode!r}")
    g = _Graph()
    emb = g.node("Cast", [TOKEN_EMBEDDINGS], "emb", to=TensorProto.FLOAT)
    mask = g.node("Cast", [ATTENTION_MASK], "mask", to=TensorProto.FLOAT)  # [N, L]
    mask3 = g.node("Unsqueeze", [mask, g.const("axis_last", [-1], np.int64)], "mask3")  # [N, L, 1]
    pooled = _pool(g, mode, emb, mask, mask3, g.const("axis1", [1], np.int64))
    if normalize:
        norm = g.node("ReduceL2", [pooled, g.const("axis_h", [-1], np.int64)], "norm", keepdims=1)
        norm = g.node("Max", [norm, g.const("eps", 1e-12)], "norm_safe")
        g.node("Div", [pooled, norm], EMBEDDING)
    else:
        g.node("Identity", [pooled], EMBEDDING)
    graph = helper.make_graph(
        g.nodes,
        f"pooler_{mode}",
        [
            helper.make_tensor_value_info(TOKEN_EMBEDDINGS, embeddings_type, ["batch", "sequence", hidden]),
            helper.make_tensor_value_info(ATTENTION_MASK, TensorProto.INT64, ["batch", "sequence"]),
        ],
        [helper.make_tensor_value_info(EMBEDDING, TensorProto.FLOAT, ["batch", hidden])],
        initializer=g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="embeddings-export")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model
