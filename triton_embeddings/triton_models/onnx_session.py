"""ONNX Runtime sessions configured one way for the embedded Triton, the verifier and the benchmark."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from triton_embeddings.contract import OnnxStepParams


def make_session(path: str, threads: int = 0, providers: list[str] | None = None) -> ort.InferenceSession:
    """An inference session; `threads=0` lets ONNX Runtime use every core."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # No busy-waiting between runs: inside Triton the tokenizer, pooler and gRPC share these cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    available = ort.get_available_providers()
    chosen = [p for p in (providers or ["CUDAExecutionProvider", "CPUExecutionProvider"]) if p in available]
    return ort.InferenceSession(path, sess_options=options, providers=chosen or ["CPUExecutionProvider"])


def session_from_config(config: dict, folder: str | Path) -> tuple[ort.InferenceSession, OnnxStepParams]:
    """The CPU session an ONNX step's config (Triton's JSON form) describes, and its parameters."""
    params = OnnxStepParams.from_config(config)
    session = make_session(str(Path(folder) / params.onnx_file), params.intra_op_threads, ["CPUExecutionProvider"])
    return session, params
