"""The export: sentence-transformers model in, verified Triton model repository out."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import onnx

from triton_embeddings import quantize
from triton_embeddings.export import onnx_export, steps, verify
from triton_embeddings.export import triton_config as tc
from triton_embeddings.export.cross_encoder import is_cross_encoder
from triton_embeddings.export.model_spec import ModelSpec, UnsupportedModelError, read_spec, with_prompts
from triton_embeddings.export.options import ExportOptions
from triton_embeddings.export.pipeline import OnnxPipeline, calibration_feeds
from triton_embeddings.export.pooler import build_pooler
from triton_embeddings.export.repository import Artifacts, write_model
from triton_embeddings.export.steps import ExportError, Log, done, stderr, step
from triton_embeddings.triton_models.tokenize import TextTokenizer

Check = Callable[[Path], verify.Verification]

@dataclass
class ExportResult:
    spec: ModelSpec
    options: ExportOptions
    verification: verify.Verification
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


def _load(source: str, options: ExportOptions, log: Log):
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


def _build(model, spec: ModelSpec, work: Path, log: Log) -> Artifacts:
    """The fp32 encoder, the pooler and the tokenizer file, in `work`."""
    t = step(log, "Exporting the transformer to ONNX")
    encoder = onnx_export.export_encoder(model, work / "fp32")
    token_types = steps.takes_token_types(encoder)
    done(log, t)
    pooler = work / "pooler.onnx"
    onnx.save(build_pooler(spec.pooling_mode, spec.normalize, spec.dimension), str(pooler))
    tokenizer_json = work / tc.tokenizer_params(spec).tokenizer_file
    model[0].tokenizer.backend_tokenizer.save(str(tokenizer_json))
    return Artifacts(encoder, pooler, tokenizer_json, token_types, spec.dimension)


def _choose(art: Artifacts, precision: str, check: Check, choose: Check, feeds: list[dict] | None, work: Path,
            log: Log):
    """The encoder of `precision` and its verification (int8: rewritten with the calibration `feeds`, the
    fastest plan that passes `choose`, then verified by `check` on texts it was not chosen on)."""
    def int8(src: Path):
        found = onnx_export.search_int8(src, work / "int8.onnx", choose, log, feeds)
        if found is None:
            raise ExportError(
                f"the int8 export is not faithful: no quantization plan reaches min cosine "
                f"{verify.THRESHOLDS['int8']}; nothing was written (use fp32)"
            )
        chosen, plan, _ = found
        return chosen, check(chosen), f"int8 plan: {plan.label} (chosen on other texts than it is verified on)"

    return steps.at_precision(art.encoder_onnx, precision, work, check, int8)


def _verified_encoder(model, spec: ModelSpec, art: Artifacts, precision: str, calibration: list[str], work: Path,
                      log: Log):
    """Compare the served pipeline with sentence-transformers; raise ExportError when it is not faithful."""
    tokenizer = TextTokenizer.from_params(tc.tokenizer_params(spec), work)
    t = step(log, "Computing reference embeddings with sentence-transformers")
    texts = verify.verification_texts()
    reference = verify.reference_embeddings(model, texts)
    done(log, t)

    def check(candidate: Path, on: dict[str, list[str]] = texts, ref=reference) -> verify.Verification:
        pipeline = OnnxPipeline(tokenizer, str(candidate), str(art.pooler_onnx))
        return verify.verify(pipeline, ref, on, precision)

    choose = check
    if precision == "int8":  # the plan is chosen on other texts, with a margin: the bar is not met in-sample
        selection = verify.selection_texts()
        selection_ref = verify.reference_embeddings(model, selection)

        def choose(candidate: Path) -> verify.Verification:
            result = check(candidate, selection, selection_ref)
            return replace(result, threshold=result.threshold + verify.SELECTION_MARGIN)

    t = step(log, f"Verifying the {precision} pipeline against the original model")
    feeds = calibration_feeds(tokenizer, calibration) if precision == "int8" else None
    chosen, result, note = _choose(art, precision, check, choose, feeds, work, log)
    steps.require_passed(result, log, f"the {precision} export is not faithful (min cosine "
                                      f"{result.min_cosine:.6f} < {result.threshold})")
    done(log, t)
    return chosen, result, note


def _check_prompts(model, spec: ModelSpec, art: Artifacts, encoder: Path, bar: float, log: Log) -> None:
    """Every prompt of the model gives sentence-transformers' vectors (`encode(..., prompt_name=...)`)."""
    texts = verify.verification_texts()["short"]
    for name, prompt in spec.prompts.items():
        params = dataclasses.replace(tc.tokenizer_params(spec), prompt=prompt)
        tokenizer = TextTokenizer.from_params(params, art.tokenizer_json.parent)
        served = OnnxPipeline(tokenizer, str(encoder), str(art.pooler_onnx)).embed(texts)
        low = float(verify.cosine(served, model.encode(texts, prompt_name=name)).min())
        log(f"    prompt {name!r}: min cosine {low:.6f}")
        if low < bar:
            raise ExportError(f"prompt {name!r} is not served faithfully (min cosine {low:.6f} < {bar})")


def _calibrate(spec: ModelSpec, art: Artifacts, encoder: Path, texts: list[str], log: Log) -> ModelSpec:
    """The spec with int8/uint8 ranges calibrated on the served pipeline's vectors."""
    t = step(log, "Calibrating the int8/uint8 output ranges")
    tokenizer = TextTokenizer.from_params(tc.tokenizer_params(spec), art.tokenizer_json.parent)
    vectors = OnnxPipeline(tokenizer, str(encoder), str(art.pooler_onnx)).embed(texts)
    done(log, t, f"{len(texts)} texts")
    return dataclasses.replace(spec, quantization_ranges=quantize.calibrate(vectors))


def export_model(source: str, repository: Path, options: ExportOptions, log: Log = stderr) -> ExportResult:
    """Export `source` (local folder or hub id), verify it, then write it into `repository`."""
    calibration = steps.calibration_texts(options.calibration_file)  # a bad file fails before the long work
    model, spec = _load(source, options, log)
    with tempfile.TemporaryDirectory(prefix="embeddings-export-") as tmp:
        work = Path(tmp)
        art = _build(model, spec, work, log)
        chosen, result, note = _verified_encoder(model, spec, art, options.precision, calibration, work, log)
        _check_prompts(model, spec, art, chosen, result.threshold, log)
        spec = _calibrate(spec, art, chosen, calibration, log)
        t = step(log, f"Writing the Triton models into {repository}")
        files = write_model(Path(repository), options, spec, dataclasses.replace(art, encoder_onnx=chosen))
        done(log, t)
    return ExportResult(spec, options, result, files, Path(repository), note)
