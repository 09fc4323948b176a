"""Export a sentence-transformers Transformer module to ONNX, then derive fp16 and int8 variants."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx

from triton_embeddings.contract import ENCODER_INPUTS, ENCODER_OUTPUT
from triton_embeddings.export import int8_rewrite

log = logging.getLogger(__name__)


def export_encoder(model, out_dir: Path) -> Path:
    """Write `model.onnx` for the model's transformer with `last_hidden_state` as its only output.

    optimum does the export; torch.onnx is the fallback for architectures optimum does not know.
    Triton's ONNX Runtime backend computes every graph output, so unused ones are dropped.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    transformer = model[0]
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir, onnx_dir = Path(tmp) / "hf", Path(tmp) / "onnx"
        transformer.auto_model.save_pretrained(hf_dir)
        transformer.tokenizer.save_pretrained(hf_dir)
        try:
            from optimum.exporters.onnx import main_export

            main_export(
                str(hf_dir), output=str(onnx_dir), task="feature-extraction", device="cpu",
                library_name="transformers", do_validation=False,
            )
            exported = onnx_dir / "model.onnx"
        except Exception as exc:  # noqa: BLE001 - any optimum failure falls back to torch.onnx
            log.warning("optimum export failed (%s); falling back to torch.onnx", exc)
            exported = _torch_export(transformer, Path(tmp) / "torch.onnx")
        proto = onnx.load(str(exported))
    target = out_dir / "model.onnx"
    keep = [o for o in proto.graph.output if o.name == ENCODER_OUTPUT]
    if not keep:
        raise RuntimeError(f"the exported encoder has no {ENCODER_OUTPUT!r} output")
    del proto.graph.output[:]
    proto.graph.output.extend(keep)
    _save(proto, target)
    return target


def _torch_export(transformer, path: Path) -> Path:
    import torch

    tok = transformer.tokenizer(["a b c", "d"], padding=True, return_tensors="pt")
    names = [n for n in ENCODER_INPUTS.values() if n in tok]
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes[ENCODER_OUTPUT] = {0: "batch", 1: "sequence"}

    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            return self.inner(**dict(zip(names, args))).last_hidden_state

    torch.onnx.export(
        Wrapper(transformer.auto_model).eval(), tuple(tok[n] for n in names), str(path),
        input_names=names, output_names=[ENCODER_OUTPUT], dynamic_axes=axes, dynamo=False,
    )
    return path


def _save(proto, target: Path) -> None:
    if proto.ByteSize() > 1_800_000_000:  # protobuf's 2 GB limit: keep weights beside the graph
        onnx.save(proto, str(target), save_as_external_data=True, location="model.onnx.data")
    else:
        onnx.save(proto, str(target))


def to_fp16(src: Path, dst: Path) -> Path:
    """fp16 weights and compute; inputs and outputs stay as they were, so the pooler is unchanged."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    _save(proto, dst)
    return dst


@dataclass(frozen=True)
class Int8Plan:
    """One way to quantize: which MatMuls stay fp32."""

    label: str
    keep_fp32: tuple[str, ...] = ()


def ffn_output_matmuls(src: Path) -> list[str]:
    """The feed-forward down-projections: their activations have the widest range, so they suffer most
    from int8 (optimum/torch name them ".../output/dense/MatMul", unlike ".../attention/output/...")."""
    graph = onnx.load(str(src), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type == "MatMul" and "output/dense" in n.name
            and "attention" not in n.name]


def ffn_input_matmuls(src: Path) -> list[str]:
    """The feed-forward up-projections (".../intermediate/dense/MatMul")."""
    graph = onnx.load(str(src), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type == "MatMul" and "intermediate/dense" in n.name]


def search_int8(src: Path, dst: Path, check: Callable[[Path], object], log: Callable[[str], None],
                feeds: list[dict] | None = None):
    """Find the fastest int8 plan whose pipeline passes `check`; return (path, plan, result) or None.

    `check` returns a verification (`verify` or `rerank_verify`) with `passed`, `margin` and `headline`.

    With `feeds` (calibration inputs), the encoder is first rewritten for int8 (`int8_rewrite`: smoothing
    and outlier split, exact in fp32), which lets MiniLM pass with every MatMul quantized. Then: try
    everything quantized; if that falls short, measure how much keeping each feed-forward MatMul
    (down-projections first, then up-projections) in fp32 helps on its own, and keep the most helpful
    ones in fp32, one more at a time, until `check` passes. (Without the rewrite, MiniLM needed five of
    its six down-projections in fp32.)
    """
    base, keep, prefix = src, (), "per-channel"
    if feeds is not None:
        rewritten = int8_rewrite.rewrite_for_int8(src, dst.with_name("rewritten.onnx"), feeds, ffn_output_matmuls(src))
        base, keep, prefix = rewritten.path, rewritten.keep_fp32, "smoothed, outliers split, per-channel"

    def attempt(label: str, fp32: tuple[str, ...] = ()):
        plan = Int8Plan(f"{prefix}, {label}", keep + fp32)
        result = check(to_int8(base, dst, plan))
        log(f"    int8 plan '{plan.label}': {result.headline}")
        return plan, result

    plan, result = attempt("all MatMul")
    if result.passed:
        return dst, plan, result
    candidates = ffn_output_matmuls(src) + ffn_input_matmuls(src)
    gain = {name: attempt(f"fp32: {name}", (name,))[1].margin for name in candidates}
    ranked = sorted(candidates, key=gain.__getitem__, reverse=True)
    for k in range(1, len(ranked) + 1):
        plan, result = attempt(f"{k} most sensitive FFN MatMul(s) fp32", tuple(ranked[:k]))
        if result.passed:
            return dst, plan, result
    return None


def to_int8(src: Path, dst: Path, plan: Int8Plan) -> Path:
    """Dynamic int8 quantization (uint8 activations, int8 per-channel weights) of MatMul nodes."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"], nodes_to_exclude=list(plan.keep_fp32),
    )
    return dst
