"""Triton Python-backend model that runs an `.onnx` file with ONNX Runtime (the embedded target).

It stands in for Triton's `onnxruntime_onnx` platform, which the embedded server lacks. Its inputs
are declared `allow_ragged_batch`, so Triton hands it every queued request whatever their lengths:
- `regroup_by_length: true` (the encoder): all rows are re-sorted by their real length (from the
  attention mask) and run in groups of similar length, each padded only to its own longest row
  (for embeddings and for a reranker's (query, document) pairs alike);
- otherwise (the pooler): requests of equal shape are concatenated and run together.
An embedded encoder declaring `EMBEDDING` (and `pooler_file`) also pools in the step: callers that send token
ids and ask for EMBEDDING alone (the gateway's direct path) get [N, D] in one hop. Only the outputs a request
asks for are computed and sent.
Its knobs are `config.pbtxt` `parameters`, read as `contract.OnnxStepParams` (`session_from_config`;
`intra_op_threads: 0` shares the cores out between the instances). Runs shrink ONNX Runtime's CPU arena
afterwards and large blocks go back to the OS, so memory stays bounded under ever new batch shapes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_embeddings.contract import ATTENTION_MASK, EMBEDDING, ONNX_ATTENTION_MASK, TOKEN_EMBEDDINGS
from triton_embeddings.triton_models.backend_utils import TokenCounters, model_config
from triton_embeddings.triton_models.gpu_engine import device_pooling, engine_or_session
from triton_embeddings.triton_models.onnx_session import (
    make_session,
    return_large_blocks_to_the_os,
    shrinking_run_options,
)
from triton_embeddings.triton_models.regroup import gather_rows, plan_groups


class TritonPythonModel:
    def initialize(self, args):
        config, folder = model_config(args)
        return_large_blocks_to_the_os()  # this process holds only this step: bounded RSS under ragged shapes
        # PyTorch on the GPU when the config and the host allow (gpu_engine.py), else ONNX Runtime on the CPU.
        self.session, params = engine_or_session(config, folder)
        self.run_options = shrinking_run_options()
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        # The fused pooler (embedded encoder): EMBEDDING is computed here, not by the encoder's ONNX; by the GPU
        # engine on the device when it runs the step, else by the pooler ONNX on the CPU.
        fused = bool(params.pooler_file) and EMBEDDING in self.outputs
        self.device_pooling = device_pooling(self.session, config) if fused else None
        self.pooler = None
        if fused and self.device_pooling is None:
            self.pooler = make_session(str(Path(folder) / params.pooler_file), 1, ["CPUExecutionProvider"], True)
        self.session_outputs = [n for n in self.outputs if not (fused and n == EMBEDDING)]
        # An output declared [-1, ...] has one row per token (hidden states); [k] has one per text (logits).
        self.per_token = [len(o["dims"]) >= 2 and int(o["dims"][0]) == -1 for o in config["output"]]
        self.regroup = params.regroup_by_length
        self.max_rows = int(config.get("max_batch_size") or 64)
        if self.regroup:
            self.tokens = TokenCounters(
                "embeddings_encoder_tokens_total",
                "Token positions the encoder computed: kind=real (text tokens) or padded (shape)",
                config["name"],
            )

    def finalize(self):
        if self.regroup:
            self.tokens.flush()

    def execute(self, requests):
        arrays = [[pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs] for r in requests]
        wanted = [set(r.requested_output_names()) or set(self.outputs) for r in requests]
        try:
            if self.regroup:
                results = self._run_regrouped(arrays, set().union(*wanted))
            else:
                results = self._run_by_shape(arrays)
        except Exception as exc:  # noqa: BLE001 - report per request; the server keeps serving
            error = pb_utils.TritonError(f"onnxruntime failed: {type(exc).__name__}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor(n, np.ascontiguousarray(t))
                                        for n, t in zip(self.outputs, out) if n in want])
            for out, want in zip(results, wanted)
        ]

    def _run_group(self, feed: dict, wanted: set[str]) -> list:
        """The encoder's outputs for one group (in `self.outputs` order); the pooled EMBEDDING when asked for,
        and None for outputs nobody asked for."""
        if self.device_pooling is not None and EMBEDDING in wanted:
            return self._pooled_on_device(feed, wanted)
        names = [n for n in self.session_outputs if n in wanted or (self.pooler and n == self.session_outputs[0])]
        outs = dict(zip(names, self.session.run(names, feed, self.run_options)))
        if self.pooler is not None and EMBEDDING in wanted:
            hidden, mask = outs[self.session_outputs[0]], feed[ONNX_ATTENTION_MASK]
            (outs[EMBEDDING],) = self.pooler.run(None, {TOKEN_EMBEDDINGS: hidden, ATTENTION_MASK: mask})
        return [outs.get(n) if n in wanted else None for n in self.outputs]

    def _pooled_on_device(self, feed: dict, wanted: set[str]) -> list:
        """The GPU engine pools where it ran: [N, D] reaches the host, the hidden states only when asked for."""
        mode, normalize = self.device_pooling
        hidden_name = self.session_outputs[0]
        pooled, hidden = self.session.pooled_and_hidden(feed, mode, normalize, hidden=hidden_name in wanted)
        outs = {EMBEDDING: pooled, hidden_name: hidden}
        return [outs.get(n) if n in wanted else None for n in self.outputs]

    def _run_by_shape(self, arrays):
        groups: dict[tuple, list[int]] = {}
        for i, tensors in enumerate(arrays):
            groups.setdefault(tuple(t.shape[1:] for t in tensors), []).append(i)
        results: list = [None] * len(arrays)
        for members in groups.values():
            feed = {n: np.concatenate([arrays[i][k] for i in members]) for k, n in enumerate(self.inputs)}
            outs = self.session.run(self.outputs, feed, self.run_options)
            offset = 0
            for i in members:
                rows = arrays[i][0].shape[0]
                results[i] = [o[offset : offset + rows] for o in outs]
                offset += rows
        return results

    def _run_regrouped(self, arrays, wanted: set[str]):
        mask_at = self.inputs.index(ONNX_ATTENTION_MASK)
        # One entry per text: (request, row, real length).
        rows = [(i, r) for i, tensors in enumerate(arrays) for r in range(tensors[0].shape[0])]
        lengths = [int(arrays[i][mask_at][r].sum()) for i, r in rows]
        results: list[list] = [[None] * len(self.outputs) for _ in arrays]
        real = padded_total = 0
        for group in plan_groups(lengths, max_rows=self.max_rows):
            length = max(1, max(lengths[g] for g in group))
            feed = {
                name: gather_rows([arrays[rows[g][0]][k][rows[g][1]] for g in group], length)
                for k, name in enumerate(self.inputs)
            }
            real += sum(lengths[g] for g in group)
            padded_total += len(group) * length
            outs = self._run_group(feed, wanted)
            for pos, g in enumerate(group):
                i, r = rows[g]
                n_rows, padded = arrays[i][mask_at].shape
                for o, out in enumerate(outs):
                    if out is None:
                        continue
                    if not self.per_token[o]:  # one value per row (a cross-encoder's logits)
                        if results[i][o] is None:
                            results[i][o] = np.zeros((n_rows, *out.shape[1:]), dtype=out.dtype)
                        results[i][o][r] = out[pos]
                        continue
                    if results[i][o] is None:  # outputs keep the request's own padded length
                        results[i][o] = np.zeros((n_rows, padded, *out.shape[2:]), dtype=out.dtype)
                    n = min(length, padded)
                    results[i][o][r, :n] = out[pos, :n]
        self.tokens.add(real, padded_total)  # sent to Triton at most once a second
        return results
