"""Read what a sentence-transformers model does, and refuse what we cannot serve faithfully."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

POOLING_MODES = ("mean", "cls", "max", "lasttoken", "mean_sqrt_len_tokens")


class UnsupportedModelError(ValueError):
    """The model's module stack cannot be served faithfully by tokenizer -> encoder -> pooler."""


@dataclass
class ModelSpec:
    """Everything the export needs to know about a sentence-transformers model."""

    source: str  # local folder or hub id, as given
    max_seq_length: int
    pooling_mode: str
    normalize: bool
    dimension: int
    lowercase: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    pad_id: int = 0
    quantization_ranges: dict = field(default_factory=dict)  # int8/uint8 output ranges (quantize.calibrate)

    @property
    def default_prompt(self) -> str:
        return self.prompts.get(self.default_prompt_name or "", "")


def _pooling_mode(pooling) -> str:
    mode = pooling.pooling_mode if hasattr(pooling, "pooling_mode") else pooling.get_pooling_mode_str()
    if isinstance(mode, (tuple, list)):
        mode = mode[0] if len(mode) == 1 else "+".join(mode)
    if mode not in POOLING_MODES:
        raise UnsupportedModelError(f"pooling mode {mode!r} is not supported (supported: {POOLING_MODES})")
    return mode


def _prompts(model, pooling) -> tuple[dict[str, str], str | None]:
    """The model's prompts and default prompt name.

    sentence-transformers >= 5 adds empty `query`/`document` prompts; empty ones change nothing, and
    dropping them lets `document` resolve as the passage role (contract.ROLE_SYNONYMS).
    """
    prompts = {k: v for k, v in (getattr(model, "prompts", None) or {}).items() if v}
    name = getattr(model, "default_prompt_name", None)
    name = name if name in prompts else None
    if name and not getattr(pooling, "include_prompt", True):
        raise UnsupportedModelError("pooling with include_prompt=False is not supported")
    return prompts, name


def with_prompts(spec: ModelSpec, prompts: dict[str, str], default_name: str | None) -> ModelSpec:
    """`spec` with prompts added or overridden (`--prompt`) and the default prompt chosen (`--default-prompt`)."""
    merged = {**spec.prompts, **prompts}
    name = spec.default_prompt_name if default_name is None else default_name
    if name and name not in merged:
        raise UnsupportedModelError(f"default prompt {name!r} is not a prompt of the model ({sorted(merged)})")
    return dataclasses.replace(spec, prompts=merged, default_prompt_name=name or None)


def _max_length(transformer, max_seq_length: int | None) -> int:
    """The model's max_seq_length, or the override when the position embeddings allow it."""
    limit = int(transformer.max_seq_length)
    if max_seq_length is None:
        return limit
    model_max = getattr(transformer.auto_model.config, "max_position_embeddings", None) or limit
    if max_seq_length > model_max:
        raise UnsupportedModelError(
            f"--max-seq-length {max_seq_length} exceeds the model's position embeddings ({model_max})"
        )
    return max_seq_length


def read_spec(model, source: str, max_seq_length: int | None = None) -> ModelSpec:
    """Build a `ModelSpec` from a loaded `SentenceTransformer`."""
    try:
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    except ImportError:  # sentence-transformers < 5.4
        from sentence_transformers.models import Normalize, Pooling, Transformer

    modules = list(model)
    kinds = [type(m).__name__ for m in modules]
    if not modules or not isinstance(modules[0], Transformer):
        raise UnsupportedModelError(f"the first module must be a Transformer, found {kinds}")
    if len(modules) < 2 or not isinstance(modules[1], Pooling):
        raise UnsupportedModelError(f"expected Transformer -> Pooling [-> Normalize], found {kinds}")
    rest = modules[2:]
    if any(not isinstance(m, Normalize) for m in rest) or len(rest) > 1:
        raise UnsupportedModelError(
            f"unsupported module stack {kinds}: only Transformer -> Pooling [-> Normalize] is served "
            "(Dense, LayerNorm and other modules would be silently dropped)"
        )
    transformer, pooling = modules[0], modules[1]
    mode = _pooling_mode(pooling)
    prompts, prompt_name = _prompts(model, pooling)
    limit = _max_length(transformer, max_seq_length)
    tokenizer = transformer.tokenizer
    # sentence-transformers 5.x renamed get_sentence_embedding_dimension to get_embedding_dimension.
    dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return ModelSpec(
        source=source,
        max_seq_length=limit,
        pooling_mode=mode,
        normalize=bool(rest),
        dimension=int(dimension()),
        lowercase=bool(getattr(transformer, "do_lower_case", False)),
        prompts=prompts,
        default_prompt_name=prompt_name,
        pad_id=int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0),
    )
