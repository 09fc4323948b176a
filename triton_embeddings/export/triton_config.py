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


def ensemble_params(spec, precision: str = "", encoder_sha256: str = "") -> c.EnsembleParams:
    """What the ensemble tells clients about a `ModelSpec` exported at `precision` (encoder file's sha256)."""
    return c.EnsembleParams(
        embedding_dimension=spec.dimension, max_seq_length=spec.max_seq_length, pooling_mode=spec.pooling_mode,
        normalize=spec.normalize, source_model=spec.source, prompts=dict(spec.prompts),
        default_prompt_name=spec.default_prompt_name or "", quantization_ranges=dict(spec.quantization_ranges),
        precision=precision, encoder_sha256=encoder_sha256,
    )


def tokenizer_params(spec) -> c.TokenizerParams:
    """How the tokenizer step tokenizes like the `ModelSpec`'s sentence-transformers model."""
    return c.TokenizerParams(max_seq_length=spec.max_seq_length, prompt=spec.default_prompt,
                             prompts=dict(spec.prompts), default_prompt_name=spec.default_prompt_name or "",
                             lowercase=spec.lowercase, pad_id=spec.pad_id)


def _inputs(*specs, ragged: bool = False) -> list:
    return [mc.ModelInput(name=n, data_type=t, dims=d, allow_ragged_batch=ragged) for n, t, d in specs]


def _request_options() -> list:
    """The optional per-row inputs that choose the prompt and the truncation side (docs/contract.md)."""
    return [mc.ModelInput(name=n, data_type=mc.TYPE_STRING, dims=[1], optional=True)
            for n in (c.PROMPT_NAME, c.TRUNCATE)]


def _outputs(*specs) -> list:
    return [mc.ModelOutput(name=n, data_type=t, dims=d) for n, t, d in specs]


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


def tokenizer_config(opts: ExportOptions, params: c.TokenizerParams, token_types: bool) -> mc.ModelConfig:
    config = mc.ModelConfig(name=opts.tokenizer, max_batch_size=opts.max_batch_size)
    _python_backend(config)
    config.input.extend(_inputs((c.TEXT, mc.TYPE_STRING, [1])))
    config.input.extend(_request_options())
    outs = [(c.INPUT_IDS, mc.TYPE_INT64, [-1]), (c.ATTENTION_MASK, mc.TYPE_INT64, [-1])]
    if token_types:
        outs.append((c.TOKEN_TYPE_IDS, mc.TYPE_INT64, [-1]))
    outs += [(c.TOKEN_COUNT, mc.TYPE_INT32, [1]), (c.TRUNCATED, mc.TYPE_BOOL, [1]),
             (c.WINDOW_SPANS, mc.TYPE_INT32, [-1, 3])]
    config.output.extend(_outputs(*outs))
    _dynamic_batching(config, opts)
    _instances(config, opts, "KIND_CPU")
    _parameters(config, params)
    return config


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


def encoder_inputs(token_types: bool) -> list[str]:
    """The encoder's ONNX input names, in the order the tokenizer emits them."""
    carried = [c.INPUT_IDS, c.ATTENTION_MASK] + ([c.TOKEN_TYPE_IDS] if token_types else [])
    return [c.ENCODER_INPUTS[n] for n in carried]


def encoder_config(opts: ExportOptions, max_len: int, token_types: bool, hidden: int,
                   encoder_sha256: str = "") -> mc.ModelConfig:
    config = mc.ModelConfig(name=opts.encoder, max_batch_size=opts.max_batch_size)
    names = encoder_inputs(token_types)
    # Ragged batches are regrouped by length inside the model (triton_embeddings.triton_models.onnx_model).
    config.input.extend(_inputs(*[(n, mc.TYPE_INT64, [-1]) for n in names], ragged=opts.target.ragged))
    config.output.extend(_outputs((c.ENCODER_OUTPUT, mc.TYPE_FP32, [-1, hidden])))
    _onnx_runtime(config, opts, regroup=True)
    _dynamic_batching(config, opts, opts.max_queue_delay_us)
    _instances(config, opts, opts.target.instance_kind, opts.encoder_count)
    _warmup(config, [(n, mc.TYPE_INT64, [16]) for n in names])
    if opts.tensorrt:
        _tensorrt(config, opts, names, max_len, encoder_sha256)
    return config


def pooler_config(opts: ExportOptions, hidden: int) -> mc.ModelConfig:
    config = mc.ModelConfig(name=opts.pooler, max_batch_size=opts.max_batch_size)
    config.input.extend(_inputs((c.TOKEN_EMBEDDINGS, mc.TYPE_FP32, [-1, hidden]),
                                (c.ATTENTION_MASK, mc.TYPE_INT64, [-1]), ragged=opts.target.ragged))
    config.output.extend(_outputs((c.EMBEDDING, mc.TYPE_FP32, [hidden])))
    _onnx_runtime(config, opts, regroup=False, threads=SMALL_STEP_THREADS)
    _dynamic_batching(config, opts)
    _instances(config, opts, opts.target.instance_kind)
    return config


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


def ensemble_config(opts: ExportOptions, params: c.EnsembleParams, token_types: bool) -> mc.ModelConfig:
    config = mc.ModelConfig(name=opts.name, platform="ensemble", max_batch_size=opts.max_batch_size)
    config.input.extend(_inputs((c.TEXT, mc.TYPE_STRING, [1])))
    config.input.extend(_request_options())
    config.output.extend(_outputs(
        (c.EMBEDDING, mc.TYPE_FP32, [params.embedding_dimension]),
        (c.TOKEN_COUNT, mc.TYPE_INT32, [1]),
        (c.TRUNCATED, mc.TYPE_BOOL, [1]),
    ))
    carried = [c.INPUT_IDS, c.ATTENTION_MASK] + ([c.TOKEN_TYPE_IDS] if token_types else [])
    # Ensemble-internal tensor names: the step's tensor name, lower-cased.
    steps = config.ensemble_scheduling.step
    _step(steps, opts.tokenizer, {c.TEXT: c.TEXT, c.PROMPT_NAME: c.PROMPT_NAME, c.TRUNCATE: c.TRUNCATE},
          {**{n: n.lower() for n in carried}, c.TOKEN_COUNT: c.TOKEN_COUNT, c.TRUNCATED: c.TRUNCATED})
    _step(steps, opts.encoder, {c.ENCODER_INPUTS[n]: n.lower() for n in carried},
          {c.ENCODER_OUTPUT: c.TOKEN_EMBEDDINGS.lower()})
    pooler_in = {c.TOKEN_EMBEDDINGS: c.TOKEN_EMBEDDINGS.lower(), c.ATTENTION_MASK: c.ATTENTION_MASK.lower()}
    _step(steps, opts.pooler, pooler_in, {c.EMBEDDING: c.EMBEDDING})
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
