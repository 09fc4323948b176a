"""Export a sentence-transformers Transformer module to ONNX, then derive fp16 and int8 variants."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx

log = logging.getLogger(__name__)

ENCODER_OUTPUT = "last_hidden_state"


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
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in tok]
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


def int8_plans(src: Path) -> Iterator[Int8Plan]:
    """Quantization plans from fastest to most careful.

    Per-tensor dynamic quantization of every MatMul is far off on MiniLM (min cosine ~0.9);
    per-channel weights help. The MatMuls that hurt most are the feed-forward output projections,
    whose activations have the widest range, so the later plans keep those (last layers first) in fp32.
    """
    graph = onnx.load(str(src), load_external_data=False).graph
    matmuls = [n.name for n in graph.node if n.op_type == "MatMul"]
    # FFN down-projections: optimum/torch name them ".../output/dense/MatMul" but not ".../attention/output/...".
    ffn_out = [n for n in matmuls if "output/dense" in n and "attention" not in n]
    yield Int8Plan("per-channel, all MatMul")
    for k in range(1, len(ffn_out) + 1):
        yield Int8Plan(f"per-channel, last {k} FFN output(s) fp32", tuple(ffn_out[-k:]))


def to_int8(src: Path, dst: Path, plan: Int8Plan) -> Path:
    """Dynamic int8 quantization (uint8 activations, int8 per-channel weights) of MatMul nodes."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"], nodes_to_exclude=list(plan.keep_fp32),
    )
    return dst
