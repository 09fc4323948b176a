"""Generate the pooling step as a small ONNX model (mask-aware; L2-normalizes when the model does)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from triton_embeddings.contract import ATTENTION_MASK, EMBEDDING, TOKEN_EMBEDDINGS
from triton_embeddings.export.model_spec import POOLING_MODES

OPSET = 18


def build_pooler(mode: str, normalize: bool, hidden: int, embeddings_type: int = TensorProto.FLOAT):
    """TOKEN_EMBEDDINGS [N, L, H] and ATTENTION_MASK [N, L] (int64) -> EMBEDDING [N, H] float32."""
    if mode not in POOLING_MODES:
        raise ValueError(f"unknown pooling mode {mode!r}")
    nodes, inits = [], []

    def const(name, value, dtype=np.float32):
        inits.append(onnx.numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def node(op, inputs, output, **attrs):
        nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    emb = node("Cast", [TOKEN_EMBEDDINGS], "emb", to=TensorProto.FLOAT)
    mask = node("Cast", [ATTENTION_MASK], "mask", to=TensorProto.FLOAT)  # [N, L]
    mask3 = node("Unsqueeze", [mask, const("axis_last", [-1], np.int64)], "mask3")  # [N, L, 1]
    axis1 = const("axis1", [1], np.int64)

    if mode in ("mean", "mean_sqrt_len_tokens"):
        summed = node("ReduceSum", [node("Mul", [emb, mask3], "masked"), axis1], "summed", keepdims=0)
        count = node("ReduceSum", [mask3, axis1], "count", keepdims=0)  # [N, 1]
        count = node("Max", [count, const("min_count", 1e-9)], "count_safe")
        if mode == "mean_sqrt_len_tokens":
            count = node("Sqrt", [count], "count_sqrt")
        pooled = node("Div", [summed, count], "pooled")
    elif mode == "cls":
        pooled = node("Gather", [emb, const("first", 0, np.int64)], "pooled", axis=1)
    elif mode == "max":
        # Padding positions get -1e9, as sentence-transformers does, before the max.
        penalty = node("Mul", [node("Sub", [const("one", 1.0), mask3], "inv"), const("big", -1e9)], "penalty")
        pooled = node("ReduceMax", [node("Add", [emb, penalty], "penalised"), axis1], "pooled", keepdims=0)
    else:  # lasttoken: the last position whose mask is 1 (right padding)
        last = node("Sub", [node("ReduceSum", [mask, axis1], "lengths", keepdims=1), const("onef", 1.0)], "lastf")
        last = node("Cast", [node("Max", [last, const("zero", 0.0)], "last_clip")], "last", to=TensorProto.INT64)
        shape = node("Shape", [emb], "emb_shape")
        hidden_dim = node("Slice", [shape, const("s2", [2], np.int64), const("s3", [3], np.int64)], "hidden_dim")
        one = const("one_i", [1], np.int64)
        target = node("Concat", [one, one, hidden_dim], "target", axis=0)  # broadcast [N, 1, 1] -> [N, 1, H]
        index = node("Expand", [node("Unsqueeze", [last, const("axis2", [2], np.int64)], "last3"), target], "index")
        gathered = node("GatherElements", [emb, index], "gathered", axis=1)
        pooled = node("Squeeze", [gathered, axis1], "pooled")

    if normalize:
        norm = node("ReduceL2", [pooled, const("axis_h", [-1], np.int64)], "norm", keepdims=1)
        norm = node("Max", [norm, const("eps", 1e-12)], "norm_safe")
        node("Div", [pooled, norm], EMBEDDING)
    else:
        node("Identity", [pooled], EMBEDDING)

    graph = helper.make_graph(
        nodes,
        f"pooler_{mode}",
        [
            helper.make_tensor_value_info(TOKEN_EMBEDDINGS, embeddings_type, ["batch", "sequence", hidden]),
            helper.make_tensor_value_info(ATTENTION_MASK, TensorProto.INT64, ["batch", "sequence"]),
        ],
        [helper.make_tensor_value_info(EMBEDDING, TensorProto.FLOAT, ["batch", hidden])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="embeddings-export")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model
