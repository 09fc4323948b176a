"""ONNX Runtime sessions configured one way for the embedded Triton, the verifier and the benchmark."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import onnxruntime as ort

from triton_embeddings.contract import ORT_ARENA_SHRINKAGE, OnnxStepParams

M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def return_large_blocks_to_the_os(threshold: int = 256 * 1024) -> bool:
    """glibc only: allocate blocks of `threshold` bytes or more with mmap, so freeing them unmaps them.

    By default glibc raises that threshold each time a large block is freed, after which the next token
    embeddings tensors (and ONNX Runtime's arena chunks) stay on the heap once freed: a served step's RSS then
    keeps the high-water mark of every batch shape it saw. A fixed threshold turns that off.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))


def auto_threads(instances: int = 1) -> int:
    """Intra-op threads per instance when the config says 0: the cores shared out between the instances."""
    return max(1, (os.cpu_count() or 1) // max(1, instances))


def make_session(
    path: str, threads: int = 0, providers: list[str] | None = None, ragged: bool = False
) -> ort.InferenceSession:
    """An inference session; `threads=0` lets ONNX Runtime use every core.

    `ragged=True` (served steps, whose input shapes change from batch to batch) turns off the memory
    pattern, which only pays for repeated shapes and otherwise keeps a plan per shape.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.enable_mem_pattern = not ragged
    # No busy-waiting between runs: inside Triton the tokenizer, pooler and gRPC share these cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, sess_options=options, providers=session_providers(providers))


def session_providers(requested: list[str] | None = None) -> list[str]:
    """The providers `make_session` gives a session: those of `requested` (default CUDA, then CPU) that this
    onnxruntime build has, else the CPU."""
    available = ort.get_available_providers()
    chosen = [p for p in (requested or ["CUDAExecutionProvider", "CPUExecutionProvider"]) if p in available]
    return chosen or ["CPUExecutionProvider"]


def shrinking_run_options() -> ort.RunOptions:
    """Run options that shrink the CPU arena after each run: served batches come in ever new (ragged)
    shapes, and without it the arena keeps the high-water mark of every shape seen."""
    options = ort.RunOptions()
    options.add_run_config_entry(ORT_ARENA_SHRINKAGE, "cpu:0")
    return options


def session_from_config(config: dict, folder: str | Path) -> tuple[ort.InferenceSession, OnnxStepParams]:
    """The CPU session a served ONNX step's config (Triton's JSON form) describes, and its parameters.

    `intra_op_threads: 0` shares the cores out between the step's instances (`instance_group` count).
    """
    params = OnnxStepParams.from_config(config)
    instances = sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or 1
    threads = params.intra_op_threads or auto_threads(instances)
    session = make_session(str(Path(folder) / params.onnx_file), threads, ["CPUExecutionProvider"], ragged=True)
    return session, params
