"""The encoder step on a GPU: PyTorch fp16 with SDPA attention (where transformers has it for the architecture),
on the weights the export wrote beside model.onnx (`contract.TORCH_WEIGHTS`), pooling on the GPU so that only
[N, D] comes back to the host.

Importable without Triton and without torch (torch is imported when an engine is built). `engine_or_session`
is what the Python-backend step calls: on a host without a CUDA device (or without torch, or without the
weights folder) it returns today's ONNX Runtime CPU session, so nothing changes there. Why PyTorch and not
ONNX Runtime's CUDA provider: docs/architecture.md, "The encoder on a GPU".
"""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import numpy as np

from triton_embeddings.contract import (
    ENCODER_OUTPUT,
    ENGINES,
    ONNX_ATTENTION_MASK,
    TORCH_WEIGHTS,
    FusedPoolerParams,
    OnnxStepParams,
)

LIBRARIES = ("torch", "transformers", "safetensors")


def libraries_present() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in LIBRARIES)


def cuda_present() -> bool:
    """A CUDA device this process can use (False without torch)."""
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def available(weights: str | Path) -> bool:
    """Whether the GPU engine can serve the step whose weights folder is `weights`."""
    return Path(weights, "config.json").is_file() and libraries_present() and cuda_present()


class TorchEncoder:
    """The transformer of a weights folder on `device` (default: CUDA if present, else the CPU), in `dtype`
    (default: fp16 on CUDA, fp32 on the CPU: the CPU fallback runs the same code, for tests)."""

    def __init__(self, weights: str | Path, device: str | None = None, dtype=None):
        import torch
        from transformers import AutoModel

        self.torch = torch
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        try:
            model = AutoModel.from_pretrained(str(weights), dtype=self.dtype, attn_implementation="sdpa")
        except ValueError:  # an architecture without SDPA in this transformers (MPNet in 4.57): its own attention
            model = AutoModel.from_pretrained(str(weights), dtype=self.dtype, attn_implementation="eager")
        self.model = model.to(self.device).eval()
        self.attention = self.model.config._attn_implementation
        self.inputs = set(inspect.signature(self.model.forward).parameters)

    def _last_hidden_state(self, feed: dict[str, np.ndarray]):
        tensors = {k: self.torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for k, v in feed.items()
                   if k in self.inputs}
        with self.torch.inference_mode():
            return self.model(**tensors).last_hidden_state

    def hidden(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """last_hidden_state [N, L, H] float32 on the host (what model.onnx gives)."""
        return self._last_hidden_state(feed).float().cpu().numpy()

    def pooled(self, feed: dict[str, np.ndarray], pooling_mode: str, normalize: bool) -> np.ndarray:
        """The pooled (and normalized) embeddings [N, H] float32: pooled on the device, only they are copied."""
        return self.pooled_and_hidden(feed, pooling_mode, normalize, hidden=False)[0]

    def pooled_and_hidden(self, feed: dict[str, np.ndarray], pooling_mode: str, normalize: bool,
                          hidden: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """One forward pass: the pooled embeddings [N, H], and last_hidden_state [N, L, H] on the host only when
        `hidden` (a caller asked for the per-token output too)."""
        from triton_embeddings.triton_models.torch_pooling import pool

        states = self._last_hidden_state(feed)
        mask = self.torch.from_numpy(np.ascontiguousarray(feed[ONNX_ATTENTION_MASK])).to(self.device)
        with self.torch.inference_mode():
            pooled = pool(states, mask, pooling_mode, normalize).cpu().numpy()
            return pooled, (states.float().cpu().numpy() if hidden else None)

    def run(self, output_names, feed: dict[str, np.ndarray], run_options=None) -> list[np.ndarray]:
        """An ONNX Runtime session's `run`, so the step's batching code is the same for both engines."""
        unknown = [n for n in output_names if n != ENCODER_OUTPUT]
        if unknown:
            raise KeyError(f"the torch engine gives only {ENCODER_OUTPUT}, not {unknown}")
        return [self.hidden(feed)]


def engine_for(config: dict, folder: str | Path) -> TorchEncoder | None:
    """The torch engine a step's config (Triton's JSON form) asks for, or None for ONNX Runtime."""
    params = OnnxStepParams.from_config(config)
    if params.engine not in ENGINES:
        raise ValueError(f"engine {params.engine!r}: expected one of {ENGINES}")
    weights = Path(folder) / TORCH_WEIGHTS
    if params.engine == "torch" or (params.engine == "auto" and available(weights)):
        return TorchEncoder(weights)
    return None


def engine_or_session(config: dict, folder: str | Path):
    """(runner, params): the torch engine when the config and the host allow, else the ONNX Runtime session."""
    engine = engine_for(config, folder)
    if engine is not None:
        return engine, OnnxStepParams.from_config(config)
    from triton_embeddings.triton_models.onnx_session import session_from_config

    return session_from_config(config, folder)


def device_pooling(runner, config: dict) -> tuple[str, bool] | None:
    """(pooling_mode, normalize) when `runner` is the torch engine and the encoder's config names its fused
    pooling (FusedPoolerParams); None: pool with the pooler ONNX on the CPU (ONNX Runtime, older exports)."""
    fused = FusedPoolerParams.from_config(config)
    if not isinstance(runner, TorchEncoder) or not fused.pooling_mode:
        return None
    return fused.pooling_mode, fused.normalize
