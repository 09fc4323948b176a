"""The Triton contract, written down once: model names, tensor names, parameter keys and typed parameter sets.

Standard library only. The exporter writes every `config.pbtxt` from these types (`to_parameters`); the
Triton-side models, the gateway, the examples and the benchmarks read them back (`from_config`). Renaming a
tensor or a parameter key is a one-line change here. docs/contract.md is the prose version.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

# ---- Model names ---------------------------------------------------------------------------------------
# A model `m` is an ensemble `m` over steps `m<suffix>`; each kind's steps are declared below (STEPS).
TOKENIZER_SUFFIX, ENCODER_SUFFIX, POOLER_SUFFIX = "_tokenizer", "_encoder", "_pooler"


# ---- Tensors -------------------------------------------------------------------------------------------
# The ensemble's public tensors (gateway and direct gRPC clients).
TEXT = "TEXT"  # input, BYTES [N, 1]
EMBEDDING = "EMBEDDING"  # output, FP32 [N, D]
TOKEN_COUNT = "TOKEN_COUNT"  # output, INT32 [N, 1]
TRUNCATED = "TRUNCATED"  # output, BOOL [N, 1]
ENSEMBLE_OUTPUTS = (EMBEDDING, TOKEN_COUNT, TRUNCATED)
# Optional ensemble inputs (also the tokenizer step's), one value per row; absent or "" = the default.
PROMPT_NAME = "PROMPT_NAME"  # BYTES [N, 1]: a prompt name of the model or a role (ROLE_SYNONYMS)
TRUNCATE = "TRUNCATE"  # BYTES [N, 1]: TRUNCATE_SIDES
TRUNCATE_SIDES = ("END", "START", "NONE")  # keep the start / keep the end / refuse longer inputs
# Tokenizer step output, computed only when requested: windows that fit max_seq_length, as
# (start char, end char, tokens) rows; -1 rows pad texts with fewer windows.
WINDOW_SPANS = "WINDOW_SPANS"  # INT32 [N, K, 3]

# Tokenizer step outputs (also the pooler's mask input).
INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS = "INPUT_IDS", "ATTENTION_MASK", "TOKEN_TYPE_IDS"
# The encoder's own tensors: the names the ONNX export gives them.
ONNX_INPUT_IDS, ONNX_ATTENTION_MASK, ONNX_TOKEN_TYPE_IDS = "input_ids", "attention_mask", "token_type_ids"
ENCODER_INPUTS = {INPUT_IDS: ONNX_INPUT_IDS, ATTENTION_MASK: ONNX_ATTENTION_MASK, TOKEN_TYPE_IDS: ONNX_TOKEN_TYPE_IDS}
ENCODER_OUTPUT = "last_hidden_state"
# Pooler input: the encoder's output under the pooler's own name.
TOKEN_EMBEDDINGS = "TOKEN_EMBEDDINGS"
FUSED_POOLER_FILE = "pooler.onnx"  # the embedded encoder's copy of the pooler (OnnxStepParams.pooler_file)

# Roles accepted as PROMPT_NAME whatever the model: each picks the first of its prompt names the model
# defines, else no prompt (so NIM- and Cohere-style clients work with models without prompts).
ROLE_SYNONYMS = {
    "query": ("query", "search_query"),
    "search_query": ("query", "search_query"),
    "passage": ("passage", "document", "search_document"),
    "document": ("passage", "document", "search_document"),
    "search_document": ("passage", "document", "search_document"),
}


class UnknownPromptError(ValueError):
    """A PROMPT_NAME that is neither a prompt of the model nor a role."""


def resolve_prompt(name: str, prompts: dict[str, str], default_name: str = "") -> str:
    """The prompt text for a requested name: "" = the default prompt, then the model's names, then roles."""
    if not name:
        return prompts.get(default_name, "")
    if name in prompts:
        return prompts[name]
    if name not in ROLE_SYNONYMS:
        raise UnknownPromptError(name)
    return next((prompts[n] for n in ROLE_SYNONYMS[name] if n in prompts), "")


def prompt_names(prompts: dict[str, str]) -> list[str]:
    """Every name resolve_prompt accepts for a model: its prompts, then the roles."""
    return list(prompts) + [r for r in ROLE_SYNONYMS if r not in prompts]


# Triton's onnxruntime backend knob (cpu target), not ours.
ORT_BACKEND_INTRA_OP_THREADS = "intra_op_thread_count"
# ONNX Runtime's run option that shrinks an arena after each run; also a parameter of Triton's
# onnxruntime backend (cpu target), and set by the embedded steps on every run.
ORT_ARENA_SHRINKAGE = "memory.enable_memory_arena_shrinkage"


# ---- Typed parameter sets ------------------------------------------------------------------------------
def param(key: str, default: Any = dataclasses.MISSING, **kwargs) -> Any:
    """A dataclass field stored in `config.pbtxt` `parameters` under `key`."""
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata={"key": key}, **kwargs)
    return field(default=default, metadata={"key": key}, **kwargs)


def _encode(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _decode(kind: Any, raw: str) -> Any:
    kind = str(kind)
    if kind.startswith("bool"):
        return raw.strip().lower() == "true"
    if kind.startswith("int"):
        return int(raw)
    if kind.startswith("float"):
        return float(raw)
    if kind.startswith("dict"):
        return json.loads(raw) if raw else {}
    return raw


class ContractError(ValueError):
    """A config does not carry what the contract requires."""


def parameters_of(config: dict) -> dict[str, str]:
    """String parameters of a model config in Triton's JSON form (Python-backend args, gRPC as_json)."""
    return {k: (v or {}).get("string_value", "") for k, v in (config.get("parameters") or {}).items()}


class ParameterSet:
    """Base of the typed parameter sets: `to_parameters()` for the writer, `from_config()` for readers."""

    what: ClassVar[str] = "model"

    def to_parameters(self) -> dict[str, str]:
        return {f.metadata["key"]: _encode(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_parameters(cls, params: dict[str, str]):
        values = {}
        for f in dataclasses.fields(cls):
            key = f.metadata["key"]
            if key in params:
                try:
                    values[f.name] = _decode(f.type, params[key])
                except ValueError as exc:
                    raise ContractError(f"{cls.what} parameter {key!r}: {exc}") from None
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ContractError(f"{cls.what} config lacks the required parameter {key!r}")
        return cls(**values)

    @classmethod
    def from_config(cls, config: dict):
        """Read a model config in Triton's JSON form."""
        return cls.from_parameters(parameters_of(config))

    @classmethod
    def keys(cls) -> list[str]:
        return [f.metadata["key"] for f in dataclasses.fields(cls)]


@dataclass(frozen=True)
class EnsembleParams(ParameterSet):
    """What the ensemble's `parameters` tell clients about an embedding model."""

    what: ClassVar[str] = "ensemble"
    embedding_dimension: int = param("embedding_dimension")
    max_seq_length: int = param("max_seq_length")
    pooling_mode: str = param("pooling_mode", "mean")
    normalize: bool = param("normalize", True)
    source_model: str = param("source_model", "")
    prompts: dict = param("prompts", {})
    default_prompt_name: str = param("default_prompt_name", "")
    # int8/uint8 output: per-dimension {"min": [...], "max": [...]} calibrated at export ({} = none).
    quantization_ranges: dict = param("quantization_ranges", {})
    # What the vectors depend on beyond the above: a re-export under the same name (int8 after fp32, another
    # quantization plan) changes them, so caches key on them too (the gateway's fingerprint). "": unknown.
    precision: str = param("precision", "")
    encoder_sha256: str = param("encoder_sha256", "")


@dataclass(frozen=True)
class TokenizerStepParams(ParameterSet):
    """Knobs every tokenizer step has (single texts and pairs); Triton writes the keys sorted."""

    max_seq_length: int = param("max_seq_length")
    tokenizer_file: str = param("tokenizer_file", "tokenizer.json")
    lowercase: bool = param("lowercase", False)
    pad_id: int = param("pad_id", 0)


@dataclass(frozen=True)
class TokenizerParams(TokenizerStepParams):
    """Knobs of the tokenizer step."""

    what: ClassVar[str] = "tokenizer"
    prompt: str = param("prompt", "")  # the default prompt's text
    prompts: dict = param("prompts", {})
    default_prompt_name: str = param("default_prompt_name", "")


@dataclass(frozen=True)
class OnnxStepParams(ParameterSet):
    """Knobs of an ONNX step run on the Python backend (the embedded target's encoder and pooler)."""

    what: ClassVar[str] = "onnx step"
    onnx_file: str = param("onnx_file", "model.onnx")
    intra_op_threads: int = param("intra_op_threads", 0)
    regroup_by_length: bool = param("regroup_by_length", False)
    # The embedded encoder's fused pooling: this pooler ONNX (in the step's folder) turns the encoder's output
    # into EMBEDDING inside the step, for callers that send token ids (docs/contract.md, "direct path").
    pooler_file: str = param("pooler_file", "")
    # Which engine runs the step (triton_models/gpu_engine.py): "auto" (PyTorch on a CUDA GPU when the version
    # folder holds TORCH_WEIGHTS and torch is installed, else ONNX Runtime on the CPU), "onnxruntime" (always),
    # "torch" (PyTorch always: on the GPU if any, else on the CPU; tests and the GPU bench's CPU mode).
    engine: str = param("engine", "auto")


@dataclass(frozen=True)
class FusedPoolerParams(ParameterSet):
    """The embedded encoder's fused pooling (written beside `pooler_file`): the pooler.onnx's mode again, so the
    GPU engine can pool on the device and copy only [N, D] to the host (triton_models/gpu_engine.py)."""

    what: ClassVar[str] = "fused pooler"
    # "": an export from before this was written; the step then pools with pooler_file on the CPU.
    pooling_mode: str = param("pooling_mode", "")
    normalize: bool = param("normalize", True)


ENGINES = ("auto", "onnxruntime", "torch")
# The encoder's version folder (embedded target, fp32): the transformer's Hugging Face config.json and
# model.safetensors, the same weights as model.onnx, for the GPU engine.
TORCH_WEIGHTS = "torch"


def is_embedding_ensemble(config: dict) -> bool:
    """True for an ensemble written by the exporter (it carries the embedding contract)."""
    return (
        config.get("platform") == "ensemble"
        and EnsembleParams.keys()[0] in parameters_of(config)
        and TEXT in {i.get("name") for i in config.get("input", [])}
    )


# ---- Rerank ensembles (cross-encoders) -----------------------------------------------------------------
# A rerank ensemble scores (query, document) pairs: <name>_tokenizer (pairs) -> <name>_encoder (ONNX
# classifier, logits) -> <name>_score (the activation). Its own tensors and parameter sets live here.
RERANK_KIND, EMBEDDING_KIND = "rerank", "embedding"
SCORE_SUFFIX = "_score"
QUERY = "QUERY"  # input, BYTES [N, 1]: the query, repeated for every pair
DOCUMENT = "DOCUMENT"  # input, BYTES [N, 1]
SCORE = "SCORE"  # output, FP32 [N, 1]: the activated relevance score (CrossEncoder.predict's value)
LOGIT = "LOGIT"  # output, FP32 [N, 1]: the raw logit
RERANK_OUTPUTS = (SCORE, LOGIT, TOKEN_COUNT, TRUNCATED)
CLASSIFIER_OUTPUT = "logits"  # the ONNX classifier's output name
SCORE_STEP_INPUT = "LOGITS"  # the score step's input


@dataclass(frozen=True)
class RerankParams(ParameterSet):
    """What a rerank ensemble's `parameters` tell clients; `kind` marks it apart from embedding ensembles."""

    what: ClassVar[str] = "rerank ensemble"
    kind: str = param("kind")  # always RERANK_KIND
    max_seq_length: int = param("max_seq_length")
    activation: str = param("activation", "sigmoid")
    truncation: str = param("truncation", "longest_first")
    source_model: str = param("source_model", "")
    # As for embeddings: a re-export under the same name changes the scores, so caches key on these too.
    precision: str = param("precision", "")
    classifier_sha256: str = param("classifier_sha256", "")


@dataclass(frozen=True)
class PairTokenizerParams(TokenizerStepParams):
    """Knobs of the rerank ensemble's pair tokenizer step."""

    what: ClassVar[str] = "pair tokenizer"
    truncation: str = param("truncation", "longest_first")


def is_rerank_ensemble(config: dict) -> bool:
    """True for a rerank ensemble written by the exporter."""
    inputs = {i.get("name") for i in config.get("input", [])}
    return (
        config.get("platform") == "ensemble"
        and parameters_of(config).get("kind") == RERANK_KIND
        and {QUERY, DOCUMENT} <= inputs
    )


# ---- Step lists ----------------------------------------------------------------------------------------
# Each kind's ensemble, declared once: its public tensors and its steps (suffix, backend, inputs, outputs).
# The exporter writes every config from these; the verifying pipeline, `local/serve` and the gateway read them.
PYTHON_BACKEND = "python"  # a generated model.py that imports its class from triton_embeddings.triton_models
ONNX_BACKEND = "onnx"  # model.onnx: Triton's onnxruntime backend, or our Python-backend step (embedded target)
DIMENSION = "dimension"  # a dim the export fills in: the model's output size
TOKEN_TYPES = "token_types"  # the feature of models whose encoder takes token_type_ids


@dataclass(frozen=True)
class TensorSpec:
    """One tensor: name, Triton data type (without `TYPE_`) and dims (without the batch; -1: any; a str: a size
    the export fills in). `link`: its name inside the ensemble ("": its own, it is public; None: not routed,
    callers ask the step for it). `optional`: requests may leave it out. `only_with`: a model feature it needs."""

    name: str
    dtype: str
    dims: tuple[int | str, ...]
    link: str | None = ""
    optional: bool = False
    only_with: str = ""

    @property
    def routed_as(self) -> str | None:
        return self.name if self.link == "" else self.link

    def bound(self, sizes: dict[str, int]) -> TensorSpec:
        return dataclasses.replace(self, dims=tuple(sizes[d] if isinstance(d, str) else d for d in self.dims))


def _bind(tensors: tuple[TensorSpec, ...], sizes: dict[str, int], features: set[str]) -> tuple[TensorSpec, ...]:
    return tuple(t.bound(sizes) for t in tensors if not t.only_with or t.only_with in features)


@dataclass(frozen=True)
class StepSpec:
    """One step model `<ensemble><suffix>`; `files`: what its version folder holds beside a generated model.py."""

    suffix: str
    backend: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    files: tuple[str, ...]

    def model(self, ensemble: str) -> str:
        return ensemble + self.suffix

    def bind(self, sizes: dict[str, int], features: set[str]) -> StepSpec:
        """The step of one model: sizes filled in, tensors of features it lacks left out."""
        return dataclasses.replace(self, inputs=_bind(self.inputs, sizes, features),
                                   outputs=_bind(self.outputs, sizes, features))


@dataclass(frozen=True)
class EnsembleSpec:
    """One kind's ensemble: its public inputs and outputs, and its steps in the order they run."""

    kind: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    steps: tuple[StepSpec, ...]

    def step(self, suffix: str) -> StepSpec:
        return next(s for s in self.steps if s.suffix == suffix)

    def models(self, ensemble: str) -> tuple[str, ...]:
        return tuple(s.model(ensemble) for s in self.steps)

    def bind(self, sizes: dict[str, int], features: set[str]) -> EnsembleSpec:
        return dataclasses.replace(self, inputs=_bind(self.inputs, sizes, features),
                                   outputs=_bind(self.outputs, sizes, features),
                                   steps=tuple(s.bind(sizes, features) for s in self.steps))


def _carried(link: bool = True) -> tuple[TensorSpec, ...]:
    """The token tensors a tokenizer hands the encoder (under the encoder's ONNX names when `link` is False)."""
    names = ((INPUT_IDS, ""), (ATTENTION_MASK, ""), (TOKEN_TYPE_IDS, TOKEN_TYPES))
    return tuple(TensorSpec(n if link else ENCODER_INPUTS[n], "INT64", (-1,), n.lower(), only_with=only)
                 for n, only in names)


def _counts() -> tuple[TensorSpec, ...]:
    return TensorSpec(TOKEN_COUNT, "INT32", (1,)), TensorSpec(TRUNCATED, "BOOL", (1,))


# The step lists are built when asked for, from the names above as they are then.
def embedding_steps() -> EnsembleSpec:
    """TEXT -> tokenizer -> encoder -> pooler -> EMBEDDING."""
    text_in = (TensorSpec(TEXT, "STRING", (1,)), TensorSpec(PROMPT_NAME, "STRING", (1,), optional=True),
               TensorSpec(TRUNCATE, "STRING", (1,), optional=True))
    embedding, hidden = TensorSpec(EMBEDDING, "FP32", (DIMENSION,)), TOKEN_EMBEDDINGS.lower()
    return EnsembleSpec(EMBEDDING_KIND, text_in, (embedding, *_counts()), (
        StepSpec(TOKENIZER_SUFFIX, PYTHON_BACKEND, text_in,
                 (*_carried(), *_counts(), TensorSpec(WINDOW_SPANS, "INT32", (-1, 3), link=None)),
                 (TokenizerStepParams.tokenizer_file,)),
        StepSpec(ENCODER_SUFFIX, ONNX_BACKEND, _carried(link=False),
                 (TensorSpec(ENCODER_OUTPUT, "FP32", (-1, DIMENSION), hidden),), (OnnxStepParams.onnx_file,)),
        StepSpec(POOLER_SUFFIX, ONNX_BACKEND,
                 (TensorSpec(TOKEN_EMBEDDINGS, "FP32", (-1, DIMENSION), hidden),
                  TensorSpec(ATTENTION_MASK, "INT64", (-1,), ATTENTION_MASK.lower())),
                 (embedding,), (OnnxStepParams.onnx_file,)),
    ))


def rerank_steps() -> EnsembleSpec:
    """(QUERY, DOCUMENT) -> pair tokenizer -> classifier -> score step -> SCORE, LOGIT."""
    pair_in = (TensorSpec(QUERY, "STRING", (1,)), TensorSpec(DOCUMENT, "STRING", (1,)))
    scores, logits = (TensorSpec(SCORE, "FP32", (1,)), TensorSpec(LOGIT, "FP32", (1,))), SCORE_STEP_INPUT.lower()
    return EnsembleSpec(RERANK_KIND, pair_in, (*scores, *_counts()), (
        StepSpec(TOKENIZER_SUFFIX, PYTHON_BACKEND, pair_in, (*_carried(), *_counts()),
                 (TokenizerStepParams.tokenizer_file,)),
        StepSpec(ENCODER_SUFFIX, ONNX_BACKEND, _carried(link=False),
                 (TensorSpec(CLASSIFIER_OUTPUT, "FP32", (1,), logits),), (OnnxStepParams.onnx_file,)),
        StepSpec(SCORE_SUFFIX, ONNX_BACKEND, (TensorSpec(SCORE_STEP_INPUT, "FP32", (1,), logits),), scores,
                 (OnnxStepParams.onnx_file,)),
    ))


STEPS = {EMBEDDING_KIND: embedding_steps, RERANK_KIND: rerank_steps}


def steps_of(kind: str) -> EnsembleSpec:
    """The declared steps of a model kind."""
    return STEPS[kind]()


def step_names(model: str, kind: str = EMBEDDING_KIND) -> tuple[str, ...]:
    """The step models behind the ensemble `model` of `kind`, in the order they run."""
    return steps_of(kind).models(model)


def rerank_step_names(model: str) -> tuple[str, ...]:
    """The pair tokenizer, classifier and score models behind the rerank ensemble `model`."""
    return step_names(model, RERANK_KIND)
