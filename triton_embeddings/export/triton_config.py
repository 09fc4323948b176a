"""Triton model configurations built from typed data and written with protobuf `text_format`.

One small function per model and per section, like PyTriton's config generator. Tensor names and
parameters come from `triton_embeddings.contract` (docs/contract.md is the prose version).
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from triton_embeddings import contract as c
from triton_embeddings.export.options import ExportOptions


def _parameters(config, params: c.ParameterSet | dict[str, str]) -> None:
    values = params if isinstance(params, dict) else params.to_parameters()
    for key, value in values.items():
        config.parameters[key].string_value = str(value)


def _dynamic_batching(config, opts: ExportOptions, delay_us: int = 0) -> None:
    """Cheap steps (tokenizer, pooler) never wait: they batch whatever queued while they ran."""
    batching = config.dynamic_batching
    batching.max_queue_delay_microseconds = delay_us
    policy = batching.default_queue_policy
    policy.max_queue_size = opts.max_queue_size
    policy.default_timeout_microseconds = opts.queue_timeout_us
    policy.timeout_action = mc.ModelQueuePolicy.REJECT


def _instances(config, opts: ExportOptions, kind: str, count: int | None = None) -> None:
    group = mc.ModelInstanceGroup(count=count or opts.instances, kind=mc.ModelInstanceGroup.Kind.Value(kind))
    config.instance_group.append(group)


def _python_backend(config) -> None:
    """Python-backend steps run a generated `model.py` that imports its class from triton_embeddings.triton_models."""
    config.backend = "python"


def _warmup(config, inputs: list[tuple[str, int, list[int]]], batch_sizes=(1, 8)) -> None:
    for batch in batch_sizes:
        warm = mc.ModelWarmup(name=f"batch_{batch}", batch_size=batch)
        for name, dtype, dims in inputs:
            warm.inputs[name].data_type = dtype
            warm.inputs[name].dims.extend(dims)
            warm.inputs[name].zero_data = True
        config.model_warmup.append(warm)


def engine_cache_path(opts: ExportOptions, onnx_sha256: str) -> str:
    """Where Triton keeps the TensorRT engines built from one ONNX file: `<dir>/<name>-<sha256[:16]>`.

    ONNX Runtime names a cached engine after the graph's structure, not its weights, so a folder per model
    name would serve a re-export with other weights from the old engine. One level below the cache
    volume: ONNX Runtime creates only the last folder of the path.
    """
    if len(onnx_sha256) != 64:
        raise ValueError("the TensorRT engine cache is keyed by the ONNX file's sha256; none was given")
    return f"{opts.trt_cache_dir}/{opts.name}-{onnx_sha256[:16]}"


def _tensorrt(config, opts: ExportOptions, inputs: list[str], max_len: int, onnx_sha256: str) -> None:
    accel = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")

    def shapes(batch: int, length: int) -> str:
        return ",".join(f"{n}:{batch}x{length}" for n in inputs)

    params = {
        "precision_mode": "FP16" if opts.tensorrt_fp16 else "FP32",
        "max_workspace_size_bytes": str(2 << 30),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": engine_cache_path(opts, onnx_sha256),
        # Kernel timings depend on layer shapes, not weights: kept per name, across re-exports.
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": f"{opts.trt_cache_dir}/{opts.name}",
        "trt_profile_min_shapes": shapes(1, 1),
        "trt_profile_opt_shapes": shapes(opts.max_batch_size, min(128, max_len)),
        "trt_profile_max_shapes": shapes(opts.max_batch_size, max_len),
    }
    for key, value in params.items():
        accel.parameters[key] = value


# The pooler and the score step: a few element-wise passes over the encoder's output, a small fraction of its
# work, so one thread. ORT's 0 would size a second pool to every core in the same process as the encoder's.
SMALL_STEP_THREADS = 1


def _onnx_runtime(config, opts: ExportOptions, regroup: bool, threads: int | None = None) -> None:
    """`threads`: the step's intra-op threads (None: `--intra-op-threads`, the encoder's)."""
    threads = opts.intra_op_threads if threads is None else threads
    if opts.target.python_onnx_steps:
        _python_backend(config)
        _parameters(config, c.OnnxStepParams(intra_op_threads=threads, regroup_by_length=regroup))
        return
    config.platform = "onnxruntime_onnx"
    if opts.target.ort_backend_threads:
        # The backend's run option: the CPU arena gives back what a batch shape no longer needs.
        _parameters(config, {c.ORT_BACKEND_INTRA_OP_THREADS: str(threads),
                             c.ORT_ARENA_SHRINKAGE: "cpu:0"})


def _step(steps, model: str, inputs: dict[str, str], outputs: dict[str, str]) -> None:
    step = steps.add(model_name=model, model_version=-1)
    step.input_map.update(inputs)
    step.output_map.update(outputs)


def _dtype(name: str) -> int:
    return mc.DataType.Value(f"TYPE_{name}")


def _tensor_inputs(tensors: tuple[c.TensorSpec, ...], ragged: bool = False) -> list:
    return [mc.ModelInput(name=t.name, data_type=_dtype(t.dtype), dims=list(t.dims), allow_ragged_batch=ragged,
                          optional=t.optional) for t in tensors]


def _tensor_outputs(tensors: tuple[c.TensorSpec, ...]) -> list:
    return [mc.ModelOutput(name=t.name, data_type=_dtype(t.dtype), dims=list(t.dims)) for t in tensors]


def step_config(opts: ExportOptions, step: c.StepSpec, ragged: bool = False, regroup: bool = False,
                threads: int | None = None) -> mc.ModelConfig:
    """A declared (bound) step's model: its name, backend and tensors; ONNX steps get their runtime knobs."""
    config = mc.ModelConfig(name=step.model(opts.name), max_batch_size=opts.max_batch_size)
    if step.backend == c.PYTHON_BACKEND:
        _python_backend(config)
    else:
        _onnx_runtime(config, opts, regroup=regroup, threads=threads)
    config.input.extend(_tensor_inputs(step.inputs, ragged))
    config.output.extend(_tensor_outputs(step.outputs))
    return config


def tokenizer_step(opts: ExportOptions, step: c.StepSpec, params: c.TokenizerStepParams) -> mc.ModelConfig:
    """A tokenizer step (texts or pairs): on the CPU, never waiting to batch."""
    config = step_config(opts, step)
    _dynamic_batching(config, opts)
    _instances(config, opts, "KIND_CPU")
    _parameters(config, params)
    return config


def encoder_step(opts: ExportOptions, step: c.StepSpec, max_len: int, onnx_sha256: str = "", delay_us: int = 0,
                 count: int | None = None) -> mc.ModelConfig:
    """The transformer step: ragged batches regrouped by length inside the model
    (triton_embeddings.triton_models.onnx_model), warmed up, TensorRT when asked."""
    config = step_config(opts, step, ragged=opts.target.ragged, regroup=True)
    names = [t.name for t in step.inputs]
    _dynamic_batching(config, opts, delay_us)
    _instances(config, opts, opts.target.instance_kind, count)
    _warmup(config, [(n, mc.TYPE_INT64, [16]) for n in names])
    if opts.tensorrt:
        _tensorrt(config, opts, names, max_len, onnx_sha256)
    return config


def fuse_pooler(config: mc.ModelConfig, dimension: int, pooling_mode: str, normalize: bool) -> None:
    """An embedded encoder step that can also pool: the per-text EMBEDDING output, from the pooler's ONNX in its
    folder (or on the device, by the GPU engine), for callers that send token ids and ask for EMBEDDING alone."""
    config.output.extend(_tensor_outputs((c.TensorSpec(c.EMBEDDING, "FP32", (dimension,)),)))
    _parameters(config, {"pooler_file": c.FUSED_POOLER_FILE})
    _parameters(config, c.FusedPoolerParams(pooling_mode=pooling_mode, normalize=normalize))


def small_step(opts: ExportOptions, step: c.StepSpec, ragged: bool = False) -> mc.ModelConfig:
    """A few element-wise passes after the transformer (the pooler, the score step)."""
    config = step_config(opts, step, ragged=ragged, threads=SMALL_STEP_THREADS)
    _dynamic_batching(config, opts)
    _instances(config, opts, opts.target.instance_kind)
    return config


def ensemble_of(opts: ExportOptions, ensemble: c.EnsembleSpec, params: c.ParameterSet) -> mc.ModelConfig:
    """The ensemble over a declared (bound) step list: each step's tensors routed under their `link` names."""
    config = mc.ModelConfig(name=opts.name, platform="ensemble", max_batch_size=opts.max_batch_size)
    config.input.extend(_tensor_inputs(ensemble.inputs))
    config.output.extend(_tensor_outputs(ensemble.outputs))
    for step in ensemble.steps:
        _step(config.ensemble_scheduling.step, step.model(opts.name),
              {t.name: t.routed_as for t in step.inputs if t.routed_as},
              {t.name: t.routed_as for t in step.outputs if t.routed_as})
    _parameters(config, params)
    return config


def render(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def parse(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def as_json(config: mc.ModelConfig) -> dict:
    """A config in Triton's JSON form: what the Python backend's `model_config` and the readers take."""
    return json_format.MessageToDict(config, preserving_proto_field_name=True)


def load(path: str | Path) -> dict:
    """A written `config.pbtxt`, parsed, in Triton's JSON form."""
    return as_json(parse(Path(path).read_text()))
