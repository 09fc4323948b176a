"""The embedding kind: a sentence-transformers model served as TEXT -> tokenizer -> encoder -> pooler -> EMBEDDING,
verified by cosine against `SentenceTransformer.encode`."""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from triton_embeddings import contract as c
from triton_embeddings import quantize
from triton_embeddings.export import onnx_export, steps
from triton_embeddings.export import triton_config as tc
from triton_embeddings.export.cross_encoder import is_cross_encoder
from triton_embeddings.export.kinds import base
from triton_embeddings.export.model_spec import ModelSpec, UnsupportedModelError, read_spec, with_prompts
from triton_embeddings.export.options import ExportOptions
from triton_embeddings.export.pooler import build_pooler
from triton_embeddings.export.steps import ExportError, Log, done, step
from triton_embeddings.triton_models import gpu_engine
from triton_embeddings.triton_models.tokenize import TextTokenizer

# Minimum cosine per precision, over every verification text.
THRESHOLDS = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.98}
# A plan chosen on the selection texts must clear the bar by this much there: a plan that only just
# clears it in-sample (0.9803) was seen to miss it on the held-out texts (0.9800).
SELECTION_MARGIN = 0.005

_LONG = (
    "Triton Inference Server batches requests dynamically, while the tokenizer pads every text in a "
    "batch to one length; the longer the texts, the more the model attends over. "
)


def verification_texts() -> dict[str, list[str]]:
    """A fixed, varied set: short, longer than any max length, non-ASCII, punctuation-only."""
    return {
        "short": [
            "hello",
            "The quick brown fox jumps over the lazy dog.",
            "How do I reset my password?",
            "Embeddings map text to vectors.",
            "GPU inference at scale",
            "a",
        ],
        "medium": [
            "Self-hosting an embeddings model keeps data on premises, gives control over latency and "
            "cuts the cost per token compared with a cloud API, at the price of running the servers.",
            "Sentence embeddings are useful for semantic search, clustering, deduplication and as "
            "features for downstream classifiers; cosine similarity compares them.",
        ],
        "long": [_LONG * 12, ("Tokens, tokens and more tokens. " * 90).strip(), " ".join(str(i) for i in range(700))],
        "non-ascii": [
            "Über den Wolken muss die Freiheit wohl grenzenlos sein.",
            "東京は日本の首都です。",
            "Съешь же ещё этих мягких французских булок.",
            "naïve café résumé — emoji 🚀🔥 and math ∑∫√",
            "مرحبا بالعالم",
        ],
        "punctuation": ["...", "?!?!", "--- *** ---", "()[]{}<>", "  \t  "],
    }


def selection_texts() -> dict[str, list[str]]:
    """Texts the int8 plan is chosen on; the verification texts stay held out to judge the choice."""
    return {
        "short": ["good morning", "Where is the nearest train station?", "Vectors for search.", "b", "OK"],
        "medium": [
            "A dynamic batcher waits a few microseconds so that requests arriving together run as one "
            "batch, trading a little latency for much better accelerator utilisation.",
            "Quantization stores weights in eight bits and rescales activations on the fly, which saves "
            "memory bandwidth on CPUs at a small cost in accuracy.",
        ],
        "long": [("Retrieval systems rank passages by similarity to a query embedding. " * 40).strip(),
                 " ".join(f"item-{i}" for i in range(400))],
        "non-ascii": ["Ça va très bien, merci beaucoup !", "北京是中国的首都。", "Привет, как дела?",
                      "γειά σου κόσμε", "¿Dónde está la biblioteca? ✨"],
        "punctuation": ["!!!", "…", "=== ### ===", ";;;", "\n\n"],
    }


class Verification(base.Verification):
    """Rows: (category, texts, min cosine, mean cosine); the bar is a minimum cosine."""

    @property
    def min_cosine(self) -> float:
        return self.value


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    return (a * b).sum(-1)


def reference_embeddings(model, texts: dict[str, list[str]]) -> dict[str, np.ndarray]:
    return {c: model.encode(t, convert_to_numpy=True, batch_size=32) for c, t in texts.items()}


def verify(pipeline, reference: dict[str, np.ndarray], texts: dict[str, list[str]], precision: str) -> Verification:
    rows = []
    for category, items in texts.items():
        cos = cosine(pipeline.embed(items), reference[category])
        rows.append((category, len(items), float(cos.min()), float(cos.mean())))
    return Verification(precision, THRESHOLDS[precision], rows)


class OnnxPipeline(base.OnnxSteps):
    """The served pipeline (tokenizer -> encoder -> pooler) in-process; the benchmark's raw baseline too."""

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer(texts)
        (pooled,) = self.head.run(None, {c.TOKEN_EMBEDDINGS: self.encode(enc), c.ATTENTION_MASK: enc.attention_mask})
        return pooled

    def embed(self, texts: list[str], batch_size: int = 32, sort_by_length: bool = True) -> np.ndarray:
        return in_batches(self.embed_batch, texts, self.head.get_outputs()[0].shape[-1], batch_size, sort_by_length)


def in_batches(embed_batch, texts: list[str], dim: int, batch_size: int = 32, sort_by_length: bool = True):
    """[len(texts), dim] float32 embedded in batches; sorting by length first keeps padding small
    (sentence-transformers does too)."""
    order = list(range(len(texts)))
    if sort_by_length:
        order.sort(key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        out[idx] = embed_batch([texts[i] for i in idx])
    return out


class TorchPipeline:
    """The tokenizer, then the GPU engine (gpu_engine.TorchEncoder) pooling on its device: what the embedded
    encoder serves on a GPU host, in-process (the export's GPU check, the GPU bench's raw ceiling)."""

    def __init__(self, tokenizer: TextTokenizer, engine, pooling_mode: str, normalize: bool):
        self.tokenizer, self.engine, self.pooling_mode, self.normalize = tokenizer, engine, pooling_mode, normalize

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        feed = {k: v for k, v in base.encoder_feed(self.tokenizer(texts)).items() if v is not None}
        return self.engine.pooled(feed, self.pooling_mode, self.normalize)

    def embed(self, texts: list[str], batch_size: int = 32, sort_by_length: bool = True) -> np.ndarray:
        dim = self.engine.model.config.hidden_size
        return in_batches(self.embed_batch, texts, dim, batch_size, sort_by_length)


def torch_verification(model, spec: ModelSpec, tokenizer: TextTokenizer, weights: Path, device: str | None = None,
                       dtype=None) -> Verification:
    """The GPU engine (fp16 on CUDA; `device="cpu"` runs the same code in fp32) against sentence-transformers
    fp32 on the verification texts, at the bar of the engine's precision."""
    engine = gpu_engine.TorchEncoder(weights, device, dtype)
    precision = str(engine.dtype).removeprefix("torch.").replace("float", "fp")
    texts = verification_texts()
    pipeline = TorchPipeline(tokenizer, engine, spec.pooling_mode, spec.normalize)
    return verify(pipeline, reference_embeddings(model, texts), texts, precision)


def calibration_feeds(tokenizer: TextTokenizer, texts: list[str], batch_size: int = 16):
    """Encoder inputs for `texts`, sorted by length, in batches."""
    texts = sorted(texts, key=len)
    return [base.encoder_feed(tokenizer(texts[i : i + batch_size])) for i in range(0, len(texts), batch_size)]


@dataclass
class Artifacts(base.StepArtifacts):
    """Files produced by the export, ready to be placed into the repository."""

    encoder_onnx: Path
    pooler_onnx: Path
    tokenizer_json: Path
    token_types: bool
    hidden: int
    torch_weights: Path | None = None  # the transformer in Hugging Face's format, for the GPU engine
    gpu_check: Verification | None = None  # the GPU engine's verification, when the export ran on a GPU host

    @property
    def encoder(self) -> Path:
        return self.encoder_onnx

    def with_encoder(self, path: Path) -> Artifacts:
        return dataclasses.replace(self, encoder_onnx=path)

    def step_files(self) -> dict[str, Path]:
        return {c.TOKENIZER_SUFFIX: self.tokenizer_json, c.ENCODER_SUFFIX: self.encoder_onnx,
                c.POOLER_SUFFIX: self.pooler_onnx}


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


def bound_steps(token_types: bool, hidden: int) -> c.EnsembleSpec:
    """The declared embedding steps of one model."""
    return c.steps_of(c.EMBEDDING_KIND).bind({c.DIMENSION: hidden}, {c.TOKEN_TYPES} if token_types else set())


def encoder_config(opts: ExportOptions, spec, token_types: bool, hidden: int, encoder_sha256: str = ""):
    step = bound_steps(token_types, hidden).step(c.ENCODER_SUFFIX)
    config = tc.encoder_step(opts, step, spec.max_seq_length, encoder_sha256, opts.max_queue_delay_us,
                             opts.encoder_count)
    if opts.target.python_onnx_steps:  # the embedded target also pools in the step (docs/contract.md)
        tc.fuse_pooler(config, hidden, spec.pooling_mode, spec.normalize)
    return config


def configs(opts: ExportOptions, spec, token_types: bool, hidden: int, encoder_sha256: str = "") -> dict[str, object]:
    """The four `ModelConfig`s of one model, by Triton model name."""
    steps_ = bound_steps(token_types, hidden)
    built = [
        tc.ensemble_of(opts, steps_, ensemble_params(spec, opts.precision, encoder_sha256)),
        tc.tokenizer_step(opts, steps_.step(c.TOKENIZER_SUFFIX), tokenizer_params(spec)),
        encoder_config(opts, spec, token_types, hidden, encoder_sha256),
        tc.small_step(opts, steps_.step(c.POOLER_SUFFIX), ragged=opts.target.ragged),
    ]
    return {config.name: config for config in built}


@dataclass
class ExportResult:
    spec: ModelSpec
    options: ExportOptions
    verification: Verification
    files: list[Path]
    repository: Path
    note: str = ""

    @property
    def precision(self) -> str:
        return self.options.precision

    def summary(self) -> str:
        spec, check = self.spec, self.verification
        default = f" (default {spec.default_prompt_name})" if spec.default_prompt_name else ""
        return steps.summary(
            f"Exported {spec.source} as '{self.options.name}' ({self.options.target}, {self.precision})",
            {"output dimension": spec.dimension, "max length": f"{spec.max_seq_length} tokens",
             "pooling": f"{spec.pooling_mode}{' + normalize' if spec.normalize else ''}",
             "min cosine": f"{check.min_cosine:.6f} (bar {check.threshold})",
             "prompts": f"{', '.join(spec.prompts) or '(none)'}{default}",
             **steps.verified_on(str(self.options.target))},
            self.note, self.repository, self.files)


def _check_prompts(model, spec: ModelSpec, art: Artifacts, runner: OnnxPipeline, bar: float, log: Log) -> None:
    """Every prompt of the model gives sentence-transformers' vectors (`encode(..., prompt_name=...)`)."""
    texts = verification_texts()["short"]
    folder = art.tokenizer_json.parent
    for name, prompt in spec.prompts.items():
        tokenizer = TextTokenizer.from_params(dataclasses.replace(tokenizer_params(spec), prompt=prompt), folder)
        served = runner.with_tokenizer(tokenizer).embed(texts)
        low = float(cosine(served, model.encode(texts, prompt_name=name)).min())
        log(f"    prompt {name!r}: min cosine {low:.6f}")
        if low < bar:
            raise ExportError(f"prompt {name!r} is not served faithfully (min cosine {low:.6f} < {bar})")


class EmbeddingKind(base.Kind):
    kind = c.EMBEDDING_KIND
    thresholds = THRESHOLDS
    modules = {c.TOKENIZER_SUFFIX: "triton_embeddings.triton_models.tokenizer_model"}
    reference_name = "sentence-transformers"
    selection_margin = SELECTION_MARGIN

    def load(self, source: str, options: ExportOptions, log: Log):
        from sentence_transformers import SentenceTransformer

        t = step(log, f"Loading {source}")
        if is_cross_encoder(source):  # SentenceTransformer would load it and mean-pool its hidden states
            raise UnsupportedModelError(f"{source} is a cross-encoder: export it as a reranker (export_reranker)")
        model = SentenceTransformer(source, device="cpu", trust_remote_code=False)
        spec = read_spec(model, options.source_label or source, options.max_seq_length)
        spec = with_prompts(spec, options.prompts, options.default_prompt)
        model.prompts, model.default_prompt_name = dict(spec.prompts), spec.default_prompt_name
        if options.max_seq_length:
            model.max_seq_length = options.max_seq_length
        done(log, t, f"dim {spec.dimension}, max length {spec.max_seq_length}, pooling {spec.pooling_mode}, "
                     f"normalize {spec.normalize}")
        return model, spec

    def build(self, model, spec: ModelSpec, work: Path, log: Log) -> Artifacts:
        t = step(log, "Exporting the transformer to ONNX")
        encoder = onnx_export.export_encoder(model, work / "fp32")
        done(log, t)
        pooler = work / "pooler.onnx"
        onnx.save(build_pooler(spec.pooling_mode, spec.normalize, spec.dimension), str(pooler))
        tokenizer_json = work / tokenizer_params(spec).tokenizer_file
        model[0].tokenizer.backend_tokenizer.save(str(tokenizer_json))
        weights = work / c.TORCH_WEIGHTS
        model[0].auto_model.save_pretrained(str(weights), safe_serialization=True)
        return Artifacts(encoder, pooler, tokenizer_json, steps.takes_token_types(encoder), spec.dimension, weights)

    def tokenizer(self, spec: ModelSpec, art: Artifacts) -> TextTokenizer:
        return TextTokenizer.from_params(tokenizer_params(spec), art.tokenizer_json.parent)

    def runner(self, tokenizer, encoder: Path, art: Artifacts) -> OnnxPipeline:
        return OnnxPipeline(tokenizer, str(encoder), str(art.pooler_onnx))

    def verification_inputs(self):
        return verification_texts()

    def selection_inputs(self):
        return selection_texts()

    def reference(self, model, inputs):
        return reference_embeddings(model, inputs)

    def verify(self, runner, reference, inputs, precision: str) -> Verification:
        return verify(runner, reference, inputs, precision)

    def calibration_feeds(self, tokenizer, texts: list[str]) -> list[dict]:
        return calibration_feeds(tokenizer, texts)

    def shortfall(self, result: Verification) -> str:
        return f"min cosine {result.min_cosine:.6f} < {result.threshold}"

    def finish(self, model, spec: ModelSpec, art: Artifacts, runner: OnnxPipeline, result, calibration: list[str],
               log: Log):
        """Every prompt checked; the int8/uint8 output ranges calibrated on the served pipeline's vectors."""
        _check_prompts(model, spec, art, runner, result.threshold, log)
        if art.torch_weights and gpu_engine.cuda_present():
            t = step(log, "Verifying the GPU engine (PyTorch fp16) against sentence-transformers fp32")
            art.gpu_check = torch_verification(model, spec, self.tokenizer(spec, art), art.torch_weights)
            log(art.gpu_check.table())
            done(log, t)
        t = step(log, "Calibrating the int8/uint8 output ranges")
        vectors = runner.embed(calibration)
        done(log, t, f"{len(calibration)} texts")
        return dataclasses.replace(spec, quantization_ranges=quantize.calibrate(vectors))

    def configs(self, opts: ExportOptions, spec, token_types: bool, sha256: str = ""):
        return configs(opts, spec, token_types, spec.dimension, sha256)

    def result(self, spec, options, verification, files, repository, note) -> ExportResult:
        return ExportResult(spec, options, verification, files, repository, note)

    def write(self, repository: Path, opts: ExportOptions, spec, art: Artifacts) -> list[Path]:
        """The steps, and for the embedded target at fp32 the GPU engine's weights beside model.onnx (int8 is a
        CPU plan: its encoder stays on ONNX Runtime)."""
        weights = art.torch_weights if serves_torch_weights(opts) else None
        if weights and art.gpu_check is not None and not art.gpu_check.passed:
            raise ExportError(f"the GPU engine is not faithful (min cosine {art.gpu_check.min_cosine:.6f} < "
                              f"{art.gpu_check.threshold}); nothing was written")
        files = super().write(repository, opts, spec, art)
        if opts.target.python_onnx_steps:  # the fused pooler beside the encoder (encoder_config)
            folder = Path(repository) / c.step_names(opts.name)[1] / "1"
            files.append(base.copy_file(art.pooler_onnx, folder / c.FUSED_POOLER_FILE))
        if weights:
            target = Path(repository) / f"{opts.name}{c.ENCODER_SUFFIX}" / "1" / c.TORCH_WEIGHTS
            shutil.copytree(weights, target)
            files += sorted(target.iterdir())
        return files


def serves_torch_weights(opts: ExportOptions) -> bool:
    """Whether the export writes the GPU engine's weights: the embedded target's fp32 encoder."""
    return opts.target.python_onnx_steps and opts.precision == "fp32"


EMBEDDING = EmbeddingKind()


def write_model(repository: Path, opts: ExportOptions, spec, art: Artifacts) -> list[Path]:
    """Replace the four models of `opts.name` in `repository`; return the files written."""
    return EMBEDDING.write(repository, opts, spec, art)
