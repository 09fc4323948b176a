"""Triton model configurations built from typed data and written with protobuf `text_format`.

One small function per model and per section, like PyTriton's config generator. The tensor names
here are the contract documented in docs/contract.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from triton_embeddings import contract

TARGETS = ("gpu", "cpu", "embedded")

# Ensemble tensors: the public contract.
TEXT, EMBEDDING, TOKEN_COUNT, TRUNCATED = "TEXT", "EMBEDDING", "TOKEN_COUNT", "TRUNCATED"
# Tokenizer outputs, encoder inputs (names the ONNX export gives them), pooler inputs.
INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS = "INPUT_IDS", "ATTENTION_MASK", "TOKEN_TYPE_IDS"
ENCODER_INPUTS = {INPUT_IDS: "input_ids", ATTENTION_MASK: "attention_mask", TOKEN_TYPE_IDS: "token_type_ids"}
ENCODER_OUTPUT = "last_hidden_state"
TOKEN_EMBEDDINGS = "TOKEN_EMBEDDINGS"


@dataclass(frozen=True)
class ServingOptions:
    """How one model is served; every field maps to a CLI option of `embeddings-export`."""

    name: str
    target: str = "embedded"  # gpu | cpu | embedded
    max_batch_size: int = 64
    max_queue_delay_us: int = 2000
    max_queue_size: int = 1024  # requests waiting per step before Triton rejects new ones
    queue_timeout_us: int = 30_000_000  # a request waiting longer is rejected, not left to hang
    instances: int = 1
    tensorrt: bool = False  # gpu only: TensorRT execution provider
    tensorrt_fp16: bool = True
    trt_cache_dir: str = "/trt_cache"  # engine and timing caches; mount a volume here to keep them
    intra_op_threads: int = 0  # embedded/cpu: ONNX Runtime threads per instance (0 = all cores)

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}")
        if self.tensorrt and self.target != "gpu":
            raise ValueError("TensorRT needs the gpu target")
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")

    @property
    def tokenizer(self) -> str:
        return f"{self.name}_tokenizer"

    @property
    def encoder(self) -> str:
        return f"{self.name}_encoder"

    @property
    def pooler(self) -> str:
        return f"{self.name}_pooler"


def _tensor(cls, name: str, dtype: int, dims: list[int]):
    return cls(name=name, data_type=dtype, dims=dims)


def _inputs(*specs, ragged: bool = False) -> list:
    return [mc.ModelInput(name=n, data_type=t, dims=d, allow_ragged_batch=ragged) for n, t, d in specs]


def _request_options() -> list:
    """The optional per-row inputs that choose the prompt and the truncation side (docs/contract.md)."""
    return [mc.ModelInput(name=n, data_type=mc.TYPE_STRING, dims=[1], optional=True)
            for n in (contract.PROMPT_NAME, contract.TRUNCATE)]


def _outputs(*specs) -> list:
    return [_tensor(mc.ModelOutput, *s) for s in specs]


def _parameters(config, values: dict[str, str]) -> None:
    for key, value in values.items():
        config.parameters[key].string_value = str(value)


def _dynamic_batching(config, opts: ServingOptions) -> None:
    batching = config.dynamic_batching
    batching.max_queue_delay_microseconds = opts.max_queue_delay_us
    policy = batching.default_queue_policy
    policy.max_queue_size = opts.max_queue_size
    policy.default_timeout_microseconds = opts.queue_timeout_us
    policy.timeout_action = mc.ModelQueuePolicy.REJECT


def _instances(config, opts: ServingOptions, gpu: bool) -> None:
    kind = mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU
    config.instance_group.append(mc.ModelInstanceGroup(count=opts.instances, kind=kind))


def _python_backend(config) -> None:
    """Python-backend steps run a generated `model.py` that imports its class from triton_embeddings.triton_models."""
    config.backend = "python"


def tokenizer_config(opts: ServingOptions, spec, token_types: bool) -> mc.ModelConfig:
    config = mc.ModelConfig(name=opts.tokenizer, max_batch_size=opts.max_batch_size)
    _python_backend(config)
    config.input.extend(_inputs((TEXT, mc.TYPE_STRING, [1])))
    config.input.extend(_request_options())
    outs = [(INPUT_IDS, mc.TYPE_INT64, [-1]), (ATTENTION_MASK, mc.TYPE_INT64, [-1])]
    if token_types:
        outs.append((TOKEN_TYPE_IDS, mc.TYPE_INT64, [-1]))
    outs += [(TOKEN_COUNT, mc.TYPE_INT32, [1]), (TRUNCATED, mc.TYPE_BOOL, [1]),
             (contract.WINDOW_SPANS, mc.TYPE_INT32, [-1, 3])]
    config.output.extend(_outputs(*outs))
    _dynamic_batching(config, opts)
    _instances(config, opts, gpu=False)
    _parameters(config, {
        "tokenizer_file": "tokenizer.json",
        "max_seq_length": spec.max_seq_length,
        "prompt": spec.default_prompt,
        "prompts": json.dumps(spec.prompts, sort_keys=True),
        "default_prompt_name": spec.default_prompt_name or "",
        "lowercase": str(spec.lowercase).lower(),
        "pad_id": spec.pad_id,
    })
    return config


def _warmup(config, inputs: list[tuple[str, int, list[int]]], batch_sizes=(1, 8)) -> None:
    for batch in batch_sizes:
        warm = mc.ModelWarmup(name=f"batch_{batch}", batch_size=batch)
        for name, dtype, dims in inputs:
            warm.inputs[name].data_type = dtype
            warm.inputs[name].dims.extend(dims)
            warm.inputs[name].zero_data = True
        config.model_warmup.append(warm)


def _tensorrt(config, opts: ServingOptions, inputs: list[str], max_len: int) -> None:
    accel = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")

    def shapes(batch: int, length: int) -> str:
        return ",".join(f"{n}:{batch}x{length}" for n in inputs)

    params = {
        "precision_mode": "FP16" if opts.tensorrt_fp16 else "FP32",
        "max_workspace_size_bytes": str(2 << 30),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": f"{opts.trt_cache_dir}/{opts.name}",
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": f"{opts.trt_cache_dir}/{opts.name}",
        "trt_profile_min_shapes": shapes(1, 1),
        "trt_profile_opt_shapes": shapes(opts.max_batch_size, min(128, max_len)),
        "trt_profile_max_shapes": shapes(opts.max_batch_size, max_len),
    }
    for key, value in params.items():
        accel.parameters[key] = value


def encoder_config(opts: ServingOptions, spec, token_types: bool, hidden: int) -> mc.ModelConfig:
    config = mc.ModelConfig(name=opts.encoder, max_batch_size=opts.max_batch_size)
    names = [ENCODER_INPUTS[INPUT_IDS], ENCODER_INPUTS[ATTENTION_MASK]]
    if token_types:
        names.append(ENCODER_INPUTS[TOKEN_TYPE_IDS])
    specs = [(n, mc.TYPE_INT64, [-1]) for n in names]
    # Embedded: ragged batches, regrouped by length inside the model (triton_embeddings.triton_models.onnx_model).
    config.input.extend(_inputs(*specs, ragged=opts.target == "embedded"))
    config.output.extend(_outputs((ENCODER_OUTPUT, mc.TYPE_FP32, [-1, hidden])))
    _onnx_runtime(config, opts)
    if opts.target == "embedded":
        _parameters(config, {"regroup_by_length": "true"})
    _dynamic_batching(config, opts)
    _instances(config, opts, gpu=opts.target == "gpu")
    _warmup(config, [(n, mc.TYPE_INT64, [16]) for n in names])
    if opts.tensorrt:
        _tensorrt(config, opts, names, spec.max_seq_length)
    return config


def pooler_config(opts: ServingOptions, hidden: int) -> mc.ModelConfig:
    config = mc.ModelConfig(name=opts.pooler, max_batch_size=opts.max_batch_size)
    config.input.extend(_inputs((TOKEN_EMBEDDINGS, mc.TYPE_FP32, [-1, hidden]),
                                (ATTENTION_MASK, mc.TYPE_INT64, [-1]), ragged=opts.target == "embedded"))
    config.output.extend(_outputs((EMBEDDING, mc.TYPE_FP32, [hidden])))
    _onnx_runtime(config, opts)
    _dynamic_batching(config, opts)
    _instances(config, opts, gpu=opts.target == "gpu")
    return config


def _onnx_runtime(config, opts: ServingOptions) -> None:
    if opts.target == "embedded":
        _python_backend(config)
        _parameters(config, {"onnx_file": "model.onnx", "intra_op_threads": opts.intra_op_threads})
    else:
        config.platform = "onnxruntime_onnx"
        if opts.target == "cpu":
            _parameters(config, {"intra_op_thread_count": opts.intra_op_threads})


def ensemble_config(opts: ServingOptions, spec, token_types: bool) -> mc.ModelConfig:
    config = mc.ModelConfig(name=opts.name, platform="ensemble", max_batch_size=opts.max_batch_size)
    config.input.extend(_inputs((TEXT, mc.TYPE_STRING, [1])))
    config.input.extend(_request_options())
    config.output.extend(_outputs(
        (EMBEDDING, mc.TYPE_FP32, [spec.dimension]),
        (TOKEN_COUNT, mc.TYPE_INT32, [1]),
        (TRUNCATED, mc.TYPE_BOOL, [1]),
    ))
    steps = config.ensemble_scheduling.step
    tok = steps.add(model_name=opts.tokenizer, model_version=-1)
    tok.input_map[TEXT] = TEXT
    for name in (contract.PROMPT_NAME, contract.TRUNCATE):
        tok.input_map[name] = name
    carried = [INPUT_IDS, ATTENTION_MASK] + ([TOKEN_TYPE_IDS] if token_types else [])
    for name in carried:
        tok.output_map[name] = name.lower()
    tok.output_map[TOKEN_COUNT] = TOKEN_COUNT
    tok.output_map[TRUNCATED] = TRUNCATED
    enc = steps.add(model_name=opts.encoder, model_version=-1)
    for name in carried:
        enc.input_map[ENCODER_INPUTS[name]] = name.lower()
    enc.output_map[ENCODER_OUTPUT] = "token_embeddings"
    pool = steps.add(model_name=opts.pooler, model_version=-1)
    pool.input_map[TOKEN_EMBEDDINGS] = "token_embeddings"
    pool.input_map[ATTENTION_MASK] = ATTENTION_MASK.lower()
    pool.output_map[EMBEDDING] = EMBEDDING
    _parameters(config, {
        "embedding_dimension": spec.dimension,
        "max_seq_length": spec.max_seq_length,
        "pooling_mode": spec.pooling_mode,
        "normalize": str(spec.normalize).lower(),
        "source_model": spec.source,
        "prompts": json.dumps(spec.prompts, sort_keys=True),
        "default_prompt_name": spec.default_prompt_name or "",
        "quantization_ranges": json.dumps(getattr(spec, "quantization_ranges", None) or {}, sort_keys=True),
    })
    return config


def render(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def parse(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())
