"""Exact fp32 rewrites that make a transformer encoder friendlier to dynamic int8 quantization.

Dynamic quantization gives a MatMul's whole input one uint8 range per call, so the few channels where
BERT-style models carry large values squeeze every other channel into a few levels. Two rewrites, exact
in fp32, take those channels out of the range (all-MiniLM-L6-v2 with every MatMul int8: min cosine
0.969 without them, 0.991 with them):
- smoothing (SmoothQuant, Xiao et al. 2023): the MatMuls fed by a LayerNormalization compute
  (x / s) @ (s * W), where s balances each channel's calibrated activation range against its weights';
- outlier split (LLM.int8(), Dettmers et al. 2022): a feed-forward down-projection, fed by the
  activation function (where smoothing does not help), sends its widest channels through a small fp32
  MatMul and the rest through the quantized one.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from triton_embeddings.contract import ONNX_ATTENTION_MASK
from triton_embeddings.triton_models.onnx_session import make_session

ALPHA = 0.5  # SmoothQuant's migration strength: the share of each channel's range moved into the weights
OUTLIER_CHANNELS = 4  # input channels per down-projection that stay fp32 (of 1536 on MiniLM)
RANGE_FLOOR = 0.1  # of the median channel range: a channel near 0 in calibration is not blown up at serving


@dataclass(frozen=True)
class Rewritten:
    path: Path
    keep_fp32: tuple[str, ...]  # the outlier MatMuls: quantizing them would undo the split
    smoothed: int  # MatMuls smoothed


def rewrite_for_int8(src: Path, dst: Path, feeds: Iterable[dict], down_projections: list[str]) -> Rewritten:
    """Write `src` with both rewrites to `dst`; `feeds` (encoder inputs) calibrate the channel ranges."""
    model = onnx.load(str(src))
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    matmuls = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    ranges = activation_ranges(model, feeds, {n.input[0] for n in matmuls})
    made_by = {out: n.op_type for n in graph.node for out in n.output}
    groups = defaultdict(list)
    for n in matmuls:
        if made_by.get(n.input[0]) == "LayerNormalization":
            groups[n.input[0]].append(n)
    after: dict[str, list] = defaultdict(list)  # tensor name -> nodes to insert once it is computed
    for x, members in groups.items():
        _smooth(graph, weights, x, members, ranges[x], after)
    downs = [n for n in matmuls if n.name in set(down_projections)]
    keep = tuple(_split_outliers(graph, weights, n, ranges[n.input[0]], after) for n in downs)
    _insert(graph, after)
    onnx.save(model, str(dst))
    return Rewritten(dst, keep, sum(len(m) for m in groups.values()))


def activation_ranges(source: onnx.ModelProto, feeds: Iterable[dict], names: set[str]) -> dict[str, np.ndarray]:
    """Per-channel max |x| of each tensor in `names` over the real (unpadded) tokens of `feeds`."""
    model = onnx.ModelProto()
    model.CopyFrom(source)  # the probe gets extra outputs; `source` stays as it is
    model.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    with tempfile.TemporaryDirectory(prefix="int8-ranges-") as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save(model, str(path))
        session = make_session(str(path))
        inputs = [i.name for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]
        ranges: dict[str, np.ndarray] = {}
        for feed in feeds:
            values = session.run(outputs, {k: feed[k] for k in inputs})
            mask = feed[ONNX_ATTENTION_MASK].astype(bool)
            for name, value in zip(outputs, values):
                if name in names:
                    per_token = value.ndim == mask.ndim + 1 and value.shape[:2] == mask.shape
                    rows = value[mask] if per_token else value.reshape(-1, value.shape[-1])
                    ranges[name] = np.maximum(ranges.get(name, 0.0), np.abs(rows).max(axis=0))
    return ranges


def _smooth(graph, weights: dict, x: str, members: list, x_range: np.ndarray, after: dict) -> None:
    """x @ W -> (x * 1/s) @ (s * W) for every MatMul in `members` (they share the input `x`)."""
    w_range = np.max([np.abs(numpy_helper.to_array(weights[n.input[1]])).max(axis=1) for n in members], axis=0)
    x_range = np.maximum(x_range, RANGE_FLOOR * np.median(x_range) + 1e-6)
    s = (x_range**ALPHA / np.maximum(w_range, 1e-6) ** (1 - ALPHA)).astype(np.float32)
    for n in members:
        _set(weights, n.input[1], numpy_helper.to_array(weights[n.input[1]]) * s[:, None])
        n.input[0] = f"{x}_smoothed"
    graph.initializer.append(numpy_helper.from_array(1 / s, f"{x}_smoothing"))
    after[x].append(helper.make_node("Mul", [x, f"{x}_smoothing"], [f"{x}_smoothed"], name=f"{x}_smooth"))


def _split_outliers(graph, weights: dict, node, x_range: np.ndarray, after: dict) -> str:
    """y = (x * mask) @ W_inliers + x[..., outliers] @ W[outliers]; returns the fp32 MatMul's name."""
    x, y, p = node.input[0], node.output[0], node.name
    w = numpy_helper.to_array(weights[node.input[1]])
    outliers = np.argsort(x_range)[::-1][:OUTLIER_CHANNELS].astype(np.int64)
    mask = np.ones(w.shape[0], np.float32)
    mask[outliers] = 0.0
    _set(weights, node.input[1], w * mask[:, None])
    graph.initializer.extend([numpy_helper.from_array(mask, f"{p}_inlier_mask"),
                              numpy_helper.from_array(outliers, f"{p}_outlier_channels"),
                              numpy_helper.from_array(w[outliers], f"{p}_outlier_weight")])
    after[x] += [
        helper.make_node("Mul", [x, f"{p}_inlier_mask"], [f"{p}_inliers"], name=f"{p}_inliers"),
        helper.make_node("Gather", [x, f"{p}_outlier_channels"], [f"{p}_outlier_x"], name=f"{p}_gather", axis=-1),
        helper.make_node("MatMul", [f"{p}_outlier_x", f"{p}_outlier_weight"], [f"{p}_outlier_y"],
                         name=f"{p}_outliers"),
    ]
    node.input[0], node.output[0] = f"{p}_inliers", f"{p}_inlier_y"
    after[f"{p}_inlier_y"].append(helper.make_node("Add", [f"{p}_inlier_y", f"{p}_outlier_y"], [y], name=f"{p}_join"))
    return f"{p}_outliers"


def _set(weights: dict, name: str, value: np.ndarray) -> None:
    weights[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))


def _insert(graph, after: dict[str, list]) -> None:
    """Put each new node right after the node that computes its input, keeping the graph sorted."""
    nodes = [m for i in graph.input for m in after.get(i.name, [])]
    for n in graph.node:
        nodes.append(n)
        nodes += [m for out in n.output for m in after.get(out, [])]
    del graph.node[:]
    graph.node.extend(nodes)
