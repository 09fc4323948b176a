"""The rerank kind: a cross-encoder served as (QUERY, DOCUMENT) -> pair tokenizer -> classifier -> score step
-> SCORE, LOGIT, verified by the largest score difference against `CrossEncoder.predict`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from triton_embeddings import contract as c
from triton_embeddings.export import steps
from triton_embeddings.export import triton_config as tc
from triton_embeddings.export.cross_encoder import RerankSpec, build_score_step, export_classifier, read_rerank_spec
from triton_embeddings.export.kinds import base
from triton_embeddings.export.options import ExportOptions
from triton_embeddings.export.steps import Log
from triton_embeddings.triton_models.pair_tokenize import PairTokenizer

# Maximum absolute difference of the activated score, per precision, over every verification pair.
THRESHOLDS = {"fp32": 1e-4, "fp16": 5e-3, "int8": 5e-2}

_LONG_DOC = (
    "Triton Inference Server batches requests dynamically, while the tokenizer pads every pair in a "
    "batch to one length; a cross-encoder reads the query and the document together. "
) * 20


def verification_pairs() -> dict[str, list[tuple[str, str]]]:
    """A fixed set: short pairs, long documents, long queries, non-ASCII and punctuation."""
    return {
        "short": [
            ("hello", "world"),
            ("How do I reset my password?", "Click 'forgot password' on the login page."),
            ("How do I reset my password?", "The quick brown fox jumps over the lazy dog."),
            ("capital of France", "Paris is the capital and largest city of France."),
            ("a", "b"),
        ],
        "long": [
            ("What does the dynamic batcher do?", _LONG_DOC),
            ("tokens " * 300, "short document"),
            ("query " * 200, ("document " * 400).strip()),
            (" ".join(str(i) for i in range(100)), " ".join(str(i) for i in range(700))),
        ],
        "non-ascii": [
            ("Wo liegt München?", "München ist die Hauptstadt Bayerns."),
            ("日本の首都は？", "東京は日本の首都です。"),
            ("Что такое булка?", "Съешь же ещё этих мягких французских булок."),
            ("emoji 🚀", "naïve café résumé — emoji 🚀🔥 and math ∑∫√"),
            ("مرحبا", "مرحبا بالعالم"),
        ],
        "punctuation": [("...", "?!?!"), ("()", "--- *** ---"), ("  \t ", "[]{}<>")],
    }


class RerankVerification(base.Verification):
    """Rows: (category, pairs, max |score diff|, max |logit diff|); the bar is a maximum score difference."""

    measure = "max |score difference|"
    higher_is_better = False
    columns = ("pairs", "max |dscore|", "max |dlogit|", 13)
    formats = (".2e", ".2e", ".0e")

    @property
    def max_diff(self) -> float:
        return self.value


def reference_scores(model, pairs: dict[str, list[tuple[str, str]]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """CrossEncoder.predict's activated scores and raw logits, per category."""
    import torch

    return {
        cat: (np.asarray(model.predict(items, batch_size=16)),
              np.asarray(model.predict(items, batch_size=16, activation_fn=torch.nn.Identity())))
        for cat, items in pairs.items()
    }


def verify(pipeline, reference, pairs, precision: str) -> RerankVerification:
    rows = []
    for cat, items in pairs.items():
        scores, logits = pipeline.predict(items)
        ref_scores, ref_logits = reference[cat]
        rows.append((cat, len(items), float(np.abs(scores - ref_scores).max()),
                     float(np.abs(logits - ref_logits).max())))
    return RerankVerification(precision, THRESHOLDS[precision], rows)


class RerankPipeline(base.OnnxSteps):
    """The served rerank pipeline (pair tokenizer -> classifier -> score step) in-process; the benchmark's
    in-process baseline too."""

    def score_batch(self, query: list[str], documents: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(scores, logits), each float32 [n], for pairs padded together."""
        logits = self.encode(self.tokenizer.pairs(query, documents))
        score, logit = self.head.run([c.SCORE, c.LOGIT], {c.SCORE_STEP_INPUT: logits.astype(np.float32)})
        return score.reshape(-1), logit.reshape(-1)

    def predict(self, pairs: list[tuple[str, str]], batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """Score pairs in batches sorted by length (as CrossEncoder.predict does); returns (scores, logits)."""
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
        scores = np.zeros(len(pairs), dtype=np.float32)
        logits = np.zeros(len(pairs), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            scores[idx], logits[idx] = self.score_batch([pairs[i][0] for i in idx], [pairs[i][1] for i in idx])
        return scores, logits


def calibration_pair_feeds(tokenizer: PairTokenizer, texts: list[str], batch_size: int = 16) -> list[dict]:
    """Classifier inputs for pairs of neighbouring calibration texts (query, document), in batches."""
    pairs = sorted(zip(texts, texts[1:] + texts[:1]), key=lambda p: len(p[0]) + len(p[1]))
    return [base.encoder_feed(tokenizer.pairs([q for q, _ in chunk], [d for _, d in chunk]))
            for chunk in (pairs[i : i + batch_size] for i in range(0, len(pairs), batch_size))]


@dataclass
class RerankArtifacts(base.StepArtifacts):
    """Files the rerank export produced, ready to be placed into the repository."""

    classifier_onnx: Path
    score_onnx: Path
    tokenizer_json: Path
    token_types: bool

    @property
    def encoder(self) -> Path:
        return self.classifier_onnx

    def with_encoder(self, path: Path) -> RerankArtifacts:
        return dataclasses.replace(self, classifier_onnx=path)

    def step_files(self) -> dict[str, Path]:
        return {c.TOKENIZER_SUFFIX: self.tokenizer_json, c.ENCODER_SUFFIX: self.classifier_onnx,
                c.SCORE_SUFFIX: self.score_onnx}


@dataclass
class RerankExportResult:
    spec: RerankSpec
    name: str
    target: str
    precision: str
    verification: RerankVerification
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


def rerank_params(spec, precision: str = "", classifier_sha256: str = "") -> c.RerankParams:
    return c.RerankParams(kind=c.RERANK_KIND, max_seq_length=spec.max_seq_length, activation=spec.activation,
                          truncation=spec.truncation, source_model=spec.source, precision=precision,
                          classifier_sha256=classifier_sha256)


def rerank_configs(opts: ExportOptions, spec, token_types: bool, sha256: str = "") -> dict[str, object]:
    """The four `ModelConfig`s of one rerank model, by Triton model name."""
    steps_ = c.steps_of(c.RERANK_KIND).bind({}, {c.TOKEN_TYPES} if token_types else set())
    tokenizer = c.PairTokenizerParams(max_seq_length=spec.max_seq_length, truncation=spec.truncation,
                                      pad_id=spec.pad_id)
    built = [
        tc.ensemble_of(opts, steps_, rerank_params(spec, opts.precision, sha256)),
        tc.tokenizer_step(opts, steps_.step(c.TOKENIZER_SUFFIX), tokenizer),
        # Embedded: ragged batches of pairs, regrouped by length inside the model, as for embeddings.
        tc.encoder_step(opts, steps_.step(c.ENCODER_SUFFIX), spec.max_seq_length, sha256),
        tc.small_step(opts, steps_.step(c.SCORE_SUFFIX)),
    ]
    return {config.name: config for config in built}


def load_cross_encoder(source: str, max_seq_length: int | None = None):
    from sentence_transformers import CrossEncoder

    return CrossEncoder(source, device="cpu", trust_remote_code=False, max_length=max_seq_length)


class RerankKind(base.Kind):
    kind = c.RERANK_KIND
    thresholds = THRESHOLDS
    modules = {c.TOKENIZER_SUFFIX: "triton_embeddings.triton_models.rerank_tokenizer_model"}
    reference_name = "CrossEncoder.predict"

    def load(self, source: str, options: ExportOptions, log: Log):
        t = steps.step(log, f"Loading cross-encoder {source}")
        model = load_cross_encoder(source, options.max_seq_length)
        spec = read_rerank_spec(model, options.source_label or source, options.max_seq_length)
        steps.done(log, t, f"max length {spec.max_seq_length}, activation {spec.activation}")
        return model, spec

    def build(self, model, spec: RerankSpec, work: Path, log: Log) -> RerankArtifacts:
        t = steps.step(log, "Exporting the classifier to ONNX")
        classifier = export_classifier(model, work / "fp32")
        steps.done(log, t)
        score = work / "score.onnx"
        onnx.save(build_score_step(spec.activation), str(score))
        tokenizer_json = work / "tokenizer.json"
        model.tokenizer.backend_tokenizer.save(str(tokenizer_json))
        return RerankArtifacts(classifier, score, tokenizer_json, steps.takes_token_types(classifier))

    def tokenizer(self, spec: RerankSpec, art: RerankArtifacts) -> PairTokenizer:
        return PairTokenizer(str(art.tokenizer_json), spec.max_seq_length, spec.truncation, spec.pad_id)

    def runner(self, tokenizer, encoder: Path, art: RerankArtifacts) -> RerankPipeline:
        return RerankPipeline(tokenizer, str(encoder), str(art.score_onnx))

    def verification_inputs(self):
        return verification_pairs()

    def reference(self, model, inputs):
        return reference_scores(model, inputs)

    def verify(self, runner, reference, inputs, precision: str) -> RerankVerification:
        return verify(runner, reference, inputs, precision)

    def calibration_feeds(self, tokenizer, texts: list[str]) -> list[dict]:
        return calibration_pair_feeds(tokenizer, texts)

    def shortfall(self, result: RerankVerification) -> str:
        return f"max |score difference| {result.max_diff:.2e} > {result.threshold:.0e}"

    def configs(self, opts: ExportOptions, spec, token_types: bool, sha256: str = ""):
        return rerank_configs(opts, spec, token_types, sha256)

    def result(self, spec, options, verification, files, repository, note) -> RerankExportResult:
        return RerankExportResult(spec, options.name, str(options.target), options.precision, verification, files,
                                  repository, note)


RERANK = RerankKind()


def write_rerank_model(repository: Path, opts: ExportOptions, spec, art: RerankArtifacts) -> list[Path]:
    """Replace the four models of `opts.name` in `repository`; return the files written."""
    return RERANK.write(repository, opts, spec, art)
