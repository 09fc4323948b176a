"""The rerank export: a cross-encoder in, a verified rerank ensemble out (pair tokenizer -> classifier -> score)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx

from triton_embeddings.export import onnx_export, rerank_verify, steps
from triton_embeddings.export.cross_encoder import RerankSpec, build_score_step, export_classifier, read_rerank_spec
from triton_embeddings.export.options import ExportOptions
from triton_embeddings.export.rerank_pipeline import RerankPipeline, calibration_pair_feeds
from triton_embeddings.triton_models.pair_tokenize import PairTokenizer


@dataclass
class RerankArtifacts:
    """Files the rerank export produced, ready to be placed into the repository."""

    classifier_onnx: Path
    score_onnx: Path
    tokenizer_json: Path
    token_types: bool


@dataclass
class RerankExportResult:
    spec: RerankSpec
    name: str
    target: str
    precision: str
    verification: rerank_verify.RerankVerification
    files: list[Path]
    repository: Path
    note: str = ""

    def summary(self) -> str:
        spec, check = self.spec, self.verification
        return steps.summary(
            f"Exported {spec.source} as rerank model '{self.name}' ({self.target}, {self.precision})",
            {"max length": f"{spec.max_seq_length} tokens per pair ({spec.truncation})",
             "score": f"{spec.activation}(logit)",
             "max |difference|": f"{check.max_diff:.2e} (bar {check.threshold:.0e})",
             **steps.verified_on(self.target)},
            self.note, self.repository, self.files)


def load_cross_encoder(source: str, max_seq_length: int | None = None):
    from sentence_transformers import CrossEncoder

    return CrossEncoder(source, device="cpu", trust_remote_code=False, max_length=max_seq_length)


def build_candidates(model, spec: RerankSpec, work: Path) -> tuple[RerankArtifacts, Callable, PairTokenizer]:
    """Export the fp32 classifier, the score step and the tokenizer into `work`; return them, a checker and
    the pair tokenizer."""
    classifier = export_classifier(model, work / "fp32")
    token_types = steps.takes_token_types(classifier)
    score = work / "score.onnx"
    onnx.save(build_score_step(spec.activation), str(score))
    tokenizer_json = work / "tokenizer.json"
    model.tokenizer.backend_tokenizer.save(str(tokenizer_json))
    tokenizer = PairTokenizer(str(tokenizer_json), spec.max_seq_length, spec.truncation, spec.pad_id)
    pairs = rerank_verify.verification_pairs()
    reference = rerank_verify.reference_scores(model, pairs)

    def check(candidate: Path, precision: str) -> rerank_verify.RerankVerification:
        return rerank_verify.verify(RerankPipeline(tokenizer, str(candidate), str(score)), reference, pairs, precision)

    return RerankArtifacts(classifier, score, tokenizer_json, token_types), check, tokenizer


def choose_precision(art: RerankArtifacts, precision: str, work: Path, check: Callable, log: Callable,
                     feeds: list[dict] | None = None):
    """The classifier at `precision` that passes verification: (path, result, note); result may fail.
    int8: the fastest plan of `onnx_export.search_int8`, rewritten with the calibration `feeds` when given."""
    def int8(src: Path):
        found = onnx_export.search_int8(src, work / "int8.onnx", lambda path: check(path, "int8"), log, feeds)
        if found is None:
            raise steps.ExportError(
                f"the int8 rerank export is not faithful: no quantization plan keeps the max |score difference| "
                f"within {rerank_verify.THRESHOLDS['int8']:.0e}; nothing was written (use fp32)")
        path, plan, result = found
        return path, result, f"int8 plan: {plan.label}"

    return steps.at_precision(art.classifier_onnx, precision, work, lambda path: check(path, precision), int8)


def export_reranker(source: str, repository: Path, options: ExportOptions, log: steps.Log = steps.stderr,
                    write: Callable | None = None) -> RerankExportResult:
    """Export the cross-encoder `source`, verify it against CrossEncoder.predict, then write it."""
    precision = options.precision
    calibration = steps.calibration_texts(options.calibration_file)  # a bad file fails before the long work
    t = steps.step(log, f"Loading cross-encoder {source}")
    model = load_cross_encoder(source, options.max_seq_length)
    spec = read_rerank_spec(model, options.source_label or source, options.max_seq_length)
    steps.done(log, t, f"max length {spec.max_seq_length}, activation {spec.activation}")
    with tempfile.TemporaryDirectory(prefix="rerank-export-") as tmp:
        work = Path(tmp)
        steps.step(log, "Exporting the classifier to ONNX; reference scores with CrossEncoder.predict")
        art, check, tokenizer = build_candidates(model, spec, work)
        steps.step(log, f"Verifying the {precision} pipeline against CrossEncoder.predict")
        feeds = calibration_pair_feeds(tokenizer, calibration) if precision == "int8" else None
        chosen, result, note = choose_precision(art, precision, work, check, log, feeds)
        steps.require_passed(result, log, f"the {precision} rerank export is not faithful (max |score difference| "
                                          f"{result.max_diff:.2e} > {result.threshold:.0e})")
        art.classifier_onnx = chosen
        steps.step(log, f"Writing the Triton models into {repository}")
        files = (write or _default_writer)(Path(repository), options, spec, art)
    return RerankExportResult(spec, options.name, str(options.target), precision, result, files,
                              Path(repository), note)


def _default_writer(repository: Path, options, spec: RerankSpec, art: RerankArtifacts) -> list[Path]:
    from triton_embeddings.export.rerank_repository import write_rerank_model

    return write_rerank_model(repository, options, spec, art)
